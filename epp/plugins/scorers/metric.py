"""``metric-scorer``: score endpoints by a custom metric (``Endpoint.custom``).

Parameters: ``metricName`` (the custom key an extractor such as ``prometheus-metric``
writes), ``direction`` (``lower-is-better``, the default, or ``higher-is-better``),
``min`` and ``max`` (normalisation bounds, both or neither) and ``staleAfter`` (a
duration, default ``5s``).

With bounds, a value scores ``clamp((value - min) / (max - min))``, inverted for
lower-is-better. Without them, the candidates that have a usable value are min-max
normalised among themselves (all equal: all 1.0).

A missing value, one older than ``staleAfter``, or one that is NaN or infinite scores 0,
the worst case: an endpoint whose signal vanished must not win because of it, which is
what would happen if "no queue reported" read as "empty queue".

Category: Distribution in both directions. The metric is a per-endpoint gauge, the same
for every request, so it can only spread load (or capacity) across endpoints; it can
hold no request-specific state, which is what Affinity means.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from epp.datalayer.endpoint import Endpoint
from epp.framework.params import Duration, require
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.scheduling import CycleState, ScorerCategory
from epp.requests.types import InferenceRequest

__all__ = ["MetricScorer", "MetricScorerParams"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricScorerParams:
    metric_name: str
    direction: Literal["lower-is-better", "higher-is-better"] = "lower-is-better"
    # Named apart from the builtins; the config keys are ``min`` and ``max``.
    min_value: float | None = field(default=None, metadata={"key": "min"})
    max_value: float | None = field(default=None, metadata={"key": "max"})
    stale_after: Duration = Duration(5.0)

    def __post_init__(self) -> None:
        require(bool(self.metric_name.strip()), "metric_name", "must not be empty", self.metric_name)
        require(self.min_value is not None or self.max_value is None, "min_value",
                "is required when max is set (give both bounds or neither)")
        require(self.max_value is not None or self.min_value is None, "max_value",
                "is required when min is set (give both bounds or neither)")
        if self.min_value is not None and self.max_value is not None:
            require(self.min_value < self.max_value, "max_value", f"must be greater than min ({self.min_value:g})",
                    self.max_value)
        require(self.stale_after > 0, "stale_after", "must be greater than 0", self.stale_after)


class MetricScorer(BasePlugin):
    """Scores endpoints by a custom metric; a missing or stale value scores worst (0)."""

    TYPE = "metric-scorer"
    PARAMS = MetricScorerParams
    params: MetricScorerParams

    def __init__(self, name: str, params: MetricScorerParams | None, handle: Handle,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if params is None:
            raise TypeError("metric-scorer needs parameters (metricName)")
        super().__init__(name, params, handle)
        self._lower_is_better = self.params.direction == "lower-is-better"
        self._clock = clock

    def category(self) -> ScorerCategory:
        return ScorerCategory.DISTRIBUTION

    def score(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> Sequence[float]:
        values = self._usable_values(endpoints)
        low, high = self.params.min_value, self.params.max_value
        if low is None or high is None:
            present = [v for v in values if v is not None]
            if not present:
                return [0.0] * len(endpoints)
            low, high = min(present), max(present)
            if low == high:
                return [0.0 if v is None else 1.0 for v in values]
        span = high - low
        scores = []
        for value in values:
            if value is None:
                scores.append(0.0)
                continue
            fraction = min(1.0, max(0.0, (value - low) / span))
            scores.append(1.0 - fraction if self._lower_is_better else fraction)
        return scores

    def _usable_values(self, endpoints: list[Endpoint]) -> list[float | None]:
        key, now, stale_after = self.params.metric_name, self._clock(), self.params.stale_after
        values: list[float | None] = []
        for ep in endpoints:
            custom = ep.custom.get(key)
            if custom is None or now - custom.update_time > stale_after or not math.isfinite(custom.value):
                values.append(None)
            else:
                values.append(custom.value)
        return values
