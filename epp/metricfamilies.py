"""Counters, gauges and histograms cheap enough for the per-request path.

prometheus_client's metrics take a lock per update and look labels up on every call;
with about 15 updates per request that was half the picker's own per-request CPU
(measured: 84 µs → see ``benchmarks/overhead``). All updates here happen on the event
loop thread, and ``/metrics`` is served from the same loop, so plain Python numbers
need no lock. Children are cached per label tuple; histograms find their bucket with
``bisect``. Each family is a prometheus_client ``Collector``, so exposition (text format,
names, ``le`` labels) stays the library's.

Cardinality: label values such as ``model_name`` come from clients, so a family keeps at
most ``MAX_CHILDREN`` label sets; further ones are counted under the label value
``other`` (logged once per family) instead of growing ``/metrics`` without bound.

Concurrency: not thread-safe by design; update only from the event loop.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["MAX_CHILDREN", "CounterFamily", "GaugeFamily", "HistogramFamily"]

log = logging.getLogger(__name__)

# Label sets kept per family before new ones are folded into "other".
MAX_CHILDREN = 1000


class _Value:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class _Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot: +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family(Collector):
    def __init__(self, name: str, doc: str, labelnames: Sequence[str], registry: CollectorRegistry | None) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], object] = {}
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no up-front description: families are cheap to collect

    def _child(self, values: tuple[str, ...]) -> object:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            if len(self._children) >= MAX_CHILDREN:
                overflow = ("other",) * len(values)
                if overflow not in self._children:
                    log.warning("%s: more than %d label sets; counting new ones as 'other'", self.name, MAX_CHILDREN)
                    self._children[overflow] = self._new()
                return self._children[overflow]
            child = self._children[values] = self._new()
        return child

    def _new(self) -> object:
        raise NotImplementedError


class CounterFamily(_Family):
    def labels(self, *values: str) -> _Value:
        return self._child(values)  # type: ignore[return-value]

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def _new(self) -> _Value:
        return _Value()

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(values, child.value)  # type: ignore[attr-defined]
        yield family


class GaugeFamily(CounterFamily):
    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(values, child.value)  # type: ignore[attr-defined]
        yield family


class HistogramFamily(_Family):
    def __init__(self, name: str, doc: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry | None) -> None:
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be increasing")
        self.bounds = bounds
        super().__init__(name, doc, labelnames, registry)

    def labels(self, *values: str) -> _Histogram:
        return self._child(values)  # type: ignore[return-value]

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def _new(self) -> _Histogram:
        return _Histogram(self.bounds)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        edges = [*(floatToGoString(b) for b in self.bounds), "+Inf"]
        for values, child in self._children.items():
            cumulative, buckets = 0, []
            for edge, count in zip(edges, child.counts, strict=True):  # type: ignore[attr-defined]
                cumulative += count
                buckets.append((edge, cumulative))
            family.add_metric(values, buckets, child.sum)  # type: ignore[attr-defined]
        yield family
