"""Counters, gauges and histograms cheap enough for the per-request path.

prometheus_client's metrics take a lock per update and look labels up on every call;
with about 15 updates per request that was half the picker's own per-request CPU
(measured: 84 µs → see ``benchmarks/overhead``). All updates here happen on the event
loop thread, and ``/metrics`` is served from the same loop, so plain Python numbers
need no lock. Children are cached per label tuple; histograms find their bucket with
``bisect``. Each family is a prometheus_client ``Collector``, so exposition (text format,
names, ``le`` labels) stays the library's.

Label values such as ``model_name`` come from clients, so three bounds keep a family's
memory small whatever clients send:

- length: a value longer than ``MAX_LABEL_LENGTH`` characters is cut to that length
  (ending in ``...``) before it is stored; the request parser already refuses such model
  names, this is the metrics layer's own guard.
- count: at most ``MAX_CHILDREN`` label sets per family. A new label set beyond that
  first evicts the least recently used *idle* child; only when there is none is it
  counted under the label value ``other`` (logged once per family).
- age: with a ``Lifecycle`` whose ``idle_seconds`` is set, a child not used for that long
  is dropped when the family is collected.

"Idle" and "used" are tracked per *collect epoch*, not per update, so updates stay plain
attribute increments with no clock read. Every scrape starts a new epoch (a shared
``Lifecycle`` is ticked once per scrape by its owner, before the families collect; a
family with its own lifecycle ticks it itself). A child records the epoch and the time of
its first lookup in each epoch (one clock read per child per scrape). A child used since
the previous scrape is never dropped, however long ago that first lookup was: its last
updates are exported first. A child not looked up since the last collect is idle:
everything it counted has already been exported, so dropping it loses nothing Prometheus
has not seen (its series simply ends, and restarts from zero if the label set comes back,
which ``rate()`` treats as a counter reset).

A gauge child whose value is not zero is never dropped or evicted: it stands for live
state (e.g. requests in flight), and dropping it would make a later ``dec()`` land on a
fresh child and go negative. It is bounded by that live state instead.

Whoever caches children across calls (``epp.metrics.PickerMetrics.for_model``) must treat
them as valid only within the epoch they were looked up in: a child can be dropped only
once its epoch is over, so a cache that checks ``Lifecycle.epoch`` never updates a child
the family no longer exports.

Families whose label values come from configuration and whose children are held for the
process lifetime (pre-bound ``observe`` methods) are created with ``expires=False``.

Concurrency: not thread-safe by design; update only from the event loop.
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["MAX_CHILDREN", "MAX_LABEL_LENGTH", "CounterFamily", "GaugeFamily", "HistogramFamily", "Lifecycle",
           "Value", "bound_label"]

log = logging.getLogger(__name__)

# Label sets kept per family before new ones evict an idle one or are folded into "other".
MAX_CHILDREN = 1000
# Longest label value kept as is (the request parser's model-name limit is the same order).
MAX_LABEL_LENGTH = 256
_CUT_MARK = "..."


def bound_label(value: str) -> str:
    """``value``, or its first characters marked as cut when it is longer than ``MAX_LABEL_LENGTH``."""
    if len(value) <= MAX_LABEL_LENGTH:
        return value
    return value[: MAX_LABEL_LENGTH - len(_CUT_MARK)] + _CUT_MARK


class Lifecycle:
    """The collect epoch and clock shared by the families of one owner (and its caches).

    ``idle_seconds``: children not used for that long are dropped at collect time
    (``None``: never).
    """

    __slots__ = ("clock", "epoch", "idle_seconds")

    def __init__(self, idle_seconds: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_seconds = idle_seconds
        self.clock = clock
        self.epoch = 0

    def tick(self) -> None:
        """Start a new epoch: called once per collect, before the families collect."""
        self.epoch += 1


class _Child:
    __slots__ = ("epoch", "touched")

    def __init__(self, epoch: int, now: float) -> None:
        self.epoch = epoch
        self.touched = now


class _Value(_Child):
    __slots__ = ("value",)

    def __init__(self, epoch: int, now: float) -> None:
        super().__init__(epoch, now)
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


# The public name of one counter or gauge child, for holders of a child across calls.
Value = _Value


class _Histogram(_Child):
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, epoch: int, now: float, bounds: tuple[float, ...]) -> None:
        super().__init__(epoch, now)
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot: +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


_C = TypeVar("_C", bound=_Child)


class _Family(Collector, Generic[_C]):
    def __init__(self, name: str, doc: str, labelnames: Sequence[str], registry: CollectorRegistry | None, *,
                 lifecycle: Lifecycle | None = None, expires: bool = True) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
        # A family with its own lifecycle starts each epoch itself; a shared one is ticked
        # once per collect by its owner (``Lifecycle.tick``), before any family collects.
        self._owns_lifecycle = lifecycle is None
        self.lifecycle = lifecycle or Lifecycle()
        # A label-less family has one child: nothing to bound, and it must not blink out.
        self.expires = expires and bool(self.labelnames)
        self._children: dict[tuple[str, ...], _C] = {}
        self._victims: list[tuple[float, tuple[str, ...]]] = []
        self._victims_epoch = -1
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no up-front description: families are cheap to collect

    def __len__(self) -> int:
        return len(self._children)

    def _child(self, values: tuple[str, ...]) -> _C:
        child = self._children.get(values)
        if child is None:
            return self._add(values)
        life = self.lifecycle
        if child.epoch != life.epoch:
            child.epoch = life.epoch
            child.touched = life.clock()
        return child

    def _add(self, values: tuple[str, ...]) -> _C:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        life = self.lifecycle
        bounded = tuple(bound_label(v) for v in values)
        if bounded != values:
            existing = self._children.get(bounded)
            if existing is not None:
                return self._child(bounded)
            values = bounded
        if len(self._children) >= MAX_CHILDREN and not self._evict_one():
            overflow = ("other",) * len(values)
            if overflow not in self._children:
                log.warning("%s: more than %d label sets in use; counting new ones as 'other'",
                            self.name, MAX_CHILDREN)
                self._children[overflow] = self._new(life.epoch, life.clock())
            return self._child(overflow)
        child = self._children[values] = self._new(life.epoch, life.clock())
        return child

    def _pinned(self, child: _C) -> bool:
        """Whether the child stands for live state and must stay (see the module docstring)."""
        return False

    def _evictable(self, child: _C, epoch: int) -> bool:
        return child.epoch != epoch and not self._pinned(child)

    def _evict_one(self) -> bool:
        """Drop the least recently used idle child; False when every child is in use."""
        if not self.expires:
            return False
        epoch = self.lifecycle.epoch
        if self._victims_epoch != epoch:
            # One scan per epoch: no child becomes idle before the next collect.
            idle = [(c.touched, k) for k, c in self._children.items() if self._evictable(c, epoch)]
            idle.sort(reverse=True)  # oldest last, popped first
            self._victims, self._victims_epoch = idle, epoch
        while self._victims:
            _, values = self._victims.pop()
            child = self._children.get(values)
            if child is not None and self._evictable(child, epoch):
                del self._children[values]
                return True
        return False

    def _expire(self) -> None:
        """Drop children idle for longer than the lifecycle allows.

        A child used since the previous collect (its epoch is the one just closed) holds
        updates no scrape has seen yet, so it stays however long ago it was first touched.
        """
        life = self.lifecycle
        if self._owns_lifecycle:
            life.tick()
        if not self.expires or life.idle_seconds is None:
            return
        cutoff = life.clock() - life.idle_seconds
        closing = life.epoch - 1
        stale = [k for k, c in self._children.items()
                 if c.touched < cutoff and c.epoch < closing and not self._pinned(c)]
        for values in stale:
            del self._children[values]

    def _new(self, epoch: int, now: float) -> _C:
        raise NotImplementedError


class CounterFamily(_Family[_Value]):
    def labels(self, *values: str) -> _Value:
        return self._child(values)

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def _new(self, epoch: int, now: float) -> _Value:
        return _Value(epoch, now)

    def collect(self) -> Iterator[Metric]:
        self._expire()
        family = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(values, child.value)
        yield family


class GaugeFamily(CounterFamily):
    def _pinned(self, child: _Value) -> bool:
        return child.value != 0

    def collect(self) -> Iterator[Metric]:
        self._expire()
        family = GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(values, child.value)
        yield family


class HistogramFamily(_Family[_Histogram]):
    def __init__(self, name: str, doc: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry | None, *, lifecycle: Lifecycle | None = None,
                 expires: bool = True) -> None:
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be increasing")
        self.bounds = bounds
        super().__init__(name, doc, labelnames, registry, lifecycle=lifecycle, expires=expires)

    def labels(self, *values: str) -> _Histogram:
        return self._child(values)

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def _new(self, epoch: int, now: float) -> _Histogram:
        return _Histogram(epoch, now, self.bounds)

    def collect(self) -> Iterator[Metric]:
        self._expire()
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        edges = [*(floatToGoString(b) for b in self.bounds), "+Inf"]
        for values, child in self._children.items():
            cumulative, buckets = 0, []
            for edge, count in zip(edges, child.counts, strict=True):
                cumulative += count
                buckets.append((edge, cumulative))
            family.add_metric(values, buckets, child.sum)
        yield family
