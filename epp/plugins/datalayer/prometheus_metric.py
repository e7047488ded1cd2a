"""``prometheus-metric``: copy one series of the shared scrape into an endpoint's custom metrics.

Wired under ``metrics-data-source`` beside ``core-metrics-extractor``; every extractor of
the source reads the same fetch, and the page is parsed only for the series they declare
(``wanted_series``). Parameters: ``metricName`` (the series name, required), ``labels``
(exact ``label: value`` matchers, all must hold), ``customKey`` (the key in
``Endpoint.custom``; defaults to ``metricName``), ``aggregate`` (how several matching
samples combine: ``sum``, the default, ``mean``, ``max`` or ``min``).

Why ``sum`` by default: vLLM-style gauges carry one sample per model or per data-parallel
engine, and a per-replica load signal is their total (as ``core-metrics-extractor`` sums
queue lengths). A fraction such as KV usage wants ``mean``; narrow with ``labels`` when
one sample is meant.

A page without a matching sample is an extraction error (logged once per transition by
the collector) and leaves the previous value with its old update time, so scorers see it
go stale rather than see a made-up number.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from epp.datalayer.endpoint import CustomValue, Endpoint
from epp.framework.params import require
from epp.framework.plugin import BasePlugin, Handle
from epp.plugins.datalayer.metrics_source import ScrapedSeries

__all__ = ["MissingMetricError", "PrometheusMetricExtractor", "PrometheusMetricParams"]

# The exposition format's metric name: a name with matchers in it (``a{b="c"}``) is a
# mistake that would silently match nothing, so it is refused at load time.
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

_AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "sum": sum,
    "mean": lambda values: sum(values) / len(values),
    "max": max,
    "min": min,
}


class MissingMetricError(Exception):
    """The page carried no sample of the wanted series with the wanted labels."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PrometheusMetricParams:
    metric_name: str
    labels: dict[str, str] = field(default_factory=dict)
    custom_key: str = ""  # empty: the metric name
    aggregate: Literal["sum", "mean", "max", "min"] = "sum"

    def __post_init__(self) -> None:
        require(bool(self.metric_name), "metric_name", "must not be empty", self.metric_name)
        require(_METRIC_NAME.fullmatch(self.metric_name) is not None, "metric_name",
                "must be a Prometheus series name; put label matchers under 'labels'", self.metric_name)
        for key, value in self.labels.items():
            require(isinstance(key, str) and _LABEL_NAME.fullmatch(key) is not None, "labels",
                    "label names must be Prometheus label names", key)
            require(isinstance(value, str), "labels", f"label {key!r}: value must be a string", value)

    @property
    def key(self) -> str:
        return self.custom_key or self.metric_name


class PrometheusMetricExtractor(BasePlugin):
    """Copies one Prometheus series (with label matchers) into each endpoint's custom metrics."""

    TYPE = "prometheus-metric"
    PARAMS = PrometheusMetricParams
    params: PrometheusMetricParams

    def __init__(self, name: str, params: PrometheusMetricParams | None, handle: Handle,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if params is None:
            raise TypeError("prometheus-metric needs parameters (metricName)")
        super().__init__(name, params, handle)
        self._wanted = frozenset((self.params.metric_name,))
        self._matchers = tuple(self.params.labels.items())
        self._combine = _AGGREGATES[self.params.aggregate]
        self._clock = clock

    @property
    def key(self) -> str:
        return self.params.key

    def input_type(self) -> type:
        return ScrapedSeries

    def wanted_series(self, endpoint: Endpoint) -> frozenset[str]:
        return self._wanted

    def extract(self, data: Any, endpoint: Endpoint) -> None:
        samples = data.get(self.params.metric_name, ())
        values = [s.value for s in samples if all(s.labels.get(k) == v for k, v in self._matchers)]
        if not values:
            raise MissingMetricError(f"no sample of {self._describe()} on the page")
        endpoint.custom[self.key] = CustomValue(float(self._combine(values)), self._clock())

    def _describe(self) -> str:
        if not self._matchers:
            return self.params.metric_name
        inside = ",".join(f'{k}="{v}"' for k, v in self._matchers)
        return f"{self.params.metric_name}{{{inside}}}"
