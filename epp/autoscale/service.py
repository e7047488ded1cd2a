"""The ``epp autoscale`` loop: every interval, read, analyze per model, publish.

Reading is a callable (``ReadingsReader``) so that the loop knows nothing of Prometheus or
pod scraping; ``source_reader`` builds one from metrics sources and query names. When a model's
metrics are missing (the read failed, or no replica of it is readable) the loop publishes
its last recommendation again, sets ``wva_recommendation_stale`` to 1 and logs a warning
when the model goes stale and an info line when it recovers. With nothing ever recommended
there is nothing to hold: the desired gauge stays absent until a first fresh analysis, so
an HPA never acts on an invented number.

Rises are published at once; a drop only once ``scale_down_after`` analyses in a row
allowed it, and then to the highest of their targets (HPA's scale-down stabilization,
counted in analyses so that it needs no clock). Readings are instants: one taken while a
few clients sit between two requests can make a busy pool look removable for one
analysis, and without this the benchmark flapped 4→3→4 on a steady load. A stale
analysis starts the count again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from epp.autoscale.analyzer import Analysis, Direction, ModelReadings, PodReading, analyze, recommend
from epp.autoscale.metrics import AutoscaleMetrics, Variant
from epp.autoscale.overrides import OverridesFile
from epp.autoscale.sources import MetricsSource, QueryResult

__all__ = ["AutoscaleService", "ModelTarget", "QueryNames", "ReadingsReader", "Recommendation", "source_reader"]

log = logging.getLogger(__name__)

# Reads every model's readings at once; a model absent from the answer has no metrics.
ReadingsReader = Callable[[Sequence[str]], Awaitable[Mapping[str, ModelReadings]]]


@dataclass(frozen=True)
class ModelTarget:
    """A model to analyze and the variant its recommendation is published for."""

    model: str
    variant: Variant


@dataclass(frozen=True)
class Recommendation:
    """One model's outcome of one analysis."""

    target: ModelTarget
    analysis: Analysis
    desired: int | None  # None: nothing recommended yet (stale from the start)
    changed: bool
    at: float  # the service clock's time of the analysis

    @property
    def stale(self) -> bool:
        return self.analysis.stale

    def as_dict(self) -> dict[str, Any]:
        v = self.target.variant
        return {"variantName": v.name, "namespace": v.namespace, "acceleratorType": v.accelerator_type,
                "desiredReplicas": self.desired, "changed": self.changed, "stale": self.stale,
                "analysis": self.analysis.as_dict()}


class AutoscaleService:
    """Owns the per-model state between analyses: the last recommendation and whether it is stale."""

    def __init__(self, read: ReadingsReader, targets: Sequence[ModelTarget], overrides: OverridesFile,
                 metrics: AutoscaleMetrics, interval: float, clock: Callable[[], float] = time.monotonic,
                 scale_down_after: int = 3) -> None:
        if not targets:
            raise ValueError("at least one model to analyze")
        if scale_down_after < 1:
            raise ValueError("scale_down_after must be at least 1")
        self.scale_down_after = scale_down_after
        self._candidates: dict[str, deque[int]] = {}
        self._read = read
        self.targets = tuple(targets)
        self.overrides = overrides
        self.metrics = metrics
        self.interval = interval
        self._clock = clock
        self._last: dict[str, Recommendation] = {}

    def last(self) -> Mapping[str, Recommendation]:
        return dict(self._last)

    def snapshot(self) -> dict[str, Any]:
        return {"intervalSeconds": self.interval,
                "models": {name: rec.as_dict() for name, rec in sorted(self._last.items())}}

    async def analyze_once(self) -> list[Recommendation]:
        """Read, analyze and publish every model once."""
        models = [t.model for t in self.targets]
        try:
            readings: Mapping[str, ModelReadings] = await self._read(models)
            failure = ""
        except Exception as exc:  # noqa: BLE001 - any read failure means "metrics missing", never a crash
            readings, failure = {}, f"{type(exc).__name__}: {exc}"
        now = self._clock()
        return [self._decide(t, readings.get(t.model), failure, now) for t in self.targets]

    def _decide(self, target: ModelTarget, reading: ModelReadings | None, failure: str, now: float) -> Recommendation:
        before = self._last.get(target.model)
        previous = before.desired if before is not None else None
        if reading is None:
            why = f"metrics read failed ({failure})" if failure else "no metrics for this model"
            reading = ModelReadings(model=target.model, pods=(), missing=why)
        analysis = analyze(reading, self.overrides.for_model(target.model))
        desired = self._stabilized(target.model, analysis, previous)
        changed = desired is not None and previous is not None and desired != previous
        rec = Recommendation(target=target, analysis=analysis, desired=desired, changed=changed, at=now)
        self._report(rec, before)
        self._last[target.model] = rec
        return rec

    def _stabilized(self, model: str, analysis: Analysis, previous: int | None) -> int | None:
        window = self._candidates.setdefault(model, deque(maxlen=self.scale_down_after))
        if analysis.stale:
            window.clear()
            return previous if previous is not None else None
        candidate = recommend(analysis, previous)
        window.append(candidate)
        # At start, what runs now is what "previous" would have been: no drop on one analysis.
        held = previous if previous is not None else analysis.current_replicas
        if candidate >= held:
            return candidate
        if len(window) < self.scale_down_after:
            return held
        return min(held, max(window))

    def _report(self, rec: Recommendation, before: Recommendation | None) -> None:
        variant = rec.target.variant
        self.metrics.publish(variant, rec.desired, rec.analysis.current_replicas, rec.stale)
        was_stale = before is not None and before.stale
        if rec.stale and not was_stale:
            held = f"holding {rec.desired} replicas" if rec.desired is not None else "nothing recommended yet"
            log.warning("model %s: %s; %s (wva_recommendation_stale=1)", rec.target.model, rec.analysis.reason, held)
        elif was_stale and not rec.stale:
            log.info("model %s: metrics back (%d replicas readable)", rec.target.model,
                     rec.analysis.current_replicas)
        if rec.changed and before is not None and before.desired is not None and rec.desired is not None:
            direction = Direction.UP if rec.desired > before.desired else Direction.DOWN
            self.metrics.changed(variant, direction.value, rec.analysis.cause)
            log.info("model %s: recommend %d replicas (was %d): %s", rec.target.model, rec.desired,
                     before.desired, rec.analysis.reason)

    async def run(self, stop: asyncio.Event, max_rounds: int | None = None) -> int:
        """Analyze every ``interval`` until ``stop`` is set (or ``max_rounds`` analyses); returns the rounds run."""
        rounds = 0
        watcher = asyncio.create_task(self.overrides.watch())
        try:
            while not stop.is_set() and (max_rounds is None or rounds < max_rounds):
                started = self._clock()
                await self.analyze_once()
                rounds += 1
                wait = max(0.0, self.interval - (self._clock() - started))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        return rounds



@dataclass(frozen=True)
class QueryNames:
    """Which queries of a source's list answer which reading."""

    kv_usage: str
    waiting: str
    running: str | None = None
    flow_control_queue: str | None = None  # None: the picker's queue is not read (taken as 0)


class MetricsMissing(RuntimeError):
    """A query the rules cannot do without failed."""


def source_reader(source: MetricsSource, names: QueryNames, *, params: Callable[[str], Mapping[str, str]],
                  picker: MetricsSource | None = None, replicas: Sequence[str] | None = None) -> ReadingsReader:
    """A reader that refreshes ``source`` once per model (and ``picker`` for the flow-control queue).

    ``params(model)`` gives the query parameters. ``replicas``, when the replica set is known
    (``--endpoints``), names every replica: one that returned nothing is read as unknown
    (NaN) rather than left out, so it still counts and blocks a scale-down. A failed KV or
    queue query makes the model's metrics missing (WVA's fatal queries); a failed
    flow-control query makes only the picker's queue unknown.
    """
    pod_queries = [q for q in (names.kv_usage, names.waiting, names.running) if q is not None]
    fc_source = picker if picker is not None else source
    if names.flow_control_queue is not None and fc_source is source:
        pod_queries.append(names.flow_control_queue)

    async def read_model(model: str) -> ModelReadings:
        p = params(model)
        results = await source.refresh(p, pod_queries)
        for q in (names.kv_usage, names.waiting):
            if not results[q].ok:
                raise MetricsMissing(f"query {q}: {results[q].error}")
        fc = 0.0
        if names.flow_control_queue is not None:
            if fc_source is source:
                fc_result = results[names.flow_control_queue]
            else:
                fc_result = (await fc_source.refresh(p, [names.flow_control_queue]))[names.flow_control_queue]
            fc = _total(fc_result)
        kv = results[names.kv_usage].by_replica()
        waiting = results[names.waiting].by_replica()
        running = results[names.running].by_replica() if names.running and results[names.running].ok else {}
        pods = list(replicas) if replicas is not None else sorted(set(kv) | set(waiting))
        readings = tuple(PodReading(pod, kv.get(pod, math.nan), waiting.get(pod, math.nan),
                                    running.get(pod, math.nan)) for pod in pods)
        return ModelReadings(model, readings, flow_control_queue=fc)

    async def read(models: Sequence[str]) -> Mapping[str, ModelReadings]:
        out: dict[str, ModelReadings] = {}
        for model in models:
            try:
                out[model] = await read_model(model)
            except MetricsMissing as exc:
                out[model] = ModelReadings(model, (), missing=f"metrics missing: {exc}")
        return out

    return read


def _total(result: QueryResult) -> float:
    """The sum over the series (the picker's queue by priority and flow); NaN when the query failed."""
    if not result.ok:
        return math.nan
    values = [v.value for v in result.values]
    return math.fsum(values) if values else 0.0
