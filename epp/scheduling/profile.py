"""A scheduling profile: filters, then weighted scorers, then one picker.

``run`` is the per-request hot path. Every plugin call is timed into
``inference_extension_plugin_duration_seconds`` (labels bound once, here), scores are
clamped to [0, 1] in one place, and an optional trace (``DecisionTrace``) records what
each plugin decided, for the debug endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter

from epp.datalayer.endpoint import Endpoint
from epp.framework.plugin import Plugin, TypedName
from epp.framework.scheduling import (
    CycleState,
    Filter,
    Picker,
    ProfileRunResult,
    SchedulingTrace,
    ScoredEndpoint,
    Scorer,
)
from epp.requests.types import InferenceRequest

__all__ = ["NoEndpointsAvailable", "Observer", "SchedulerProfile", "WeightedScorer", "no_observer"]

# Given an extension point and a plugin, returns a function that records one duration.
Observer = Callable[[str, TypedName], Callable[[float], None]]


def _ignore(_: float) -> None:
    return None


def no_observer(_point: str, _name: TypedName) -> Callable[[float], None]:
    return _ignore


class NoEndpointsAvailable(Exception):
    """The filters left no endpoint; the profile produced no result."""


class WeightedScorer:
    __slots__ = ("scorer", "weight")

    def __init__(self, scorer: Scorer, weight: float) -> None:
        self.scorer = scorer
        self.weight = weight


class SchedulerProfile:
    """Filters, weighted scorers and a picker; satisfies ``epp.framework.scheduling.Profile``."""

    def __init__(
        self,
        name: str,
        filters: Sequence[Filter],
        scorers: Sequence[WeightedScorer],
        picker: Picker,
        observer: Observer = no_observer,
    ) -> None:
        self.name = name
        self.filters = tuple(filters)
        self.scorers = tuple(scorers)
        self.picker = picker
        self._filters = [(f, str(_name(f)), observer("Filter", _name(f))) for f in self.filters]
        self._scorers = [
            (ws.scorer, ws.weight, str(_name(ws.scorer)), observer("Scorer", _name(ws.scorer))) for ws in self.scorers
        ]
        self._picker_observe = observer("Picker", _name(picker))

    def run(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        endpoints: list[Endpoint],
        trace: SchedulingTrace | None = None,
    ) -> ProfileRunResult:
        endpoints = self._run_filters(cycle, request, endpoints, trace)
        scored = self._run_scorers(cycle, request, endpoints, trace)
        start = perf_counter()
        result = self.picker.pick(cycle, request, scored)
        self._picker_observe(perf_counter() - start)
        if trace is not None:
            trace.picked(self.name, [ep.name for ep in result.endpoints])
        return result

    def _run_filters(
        self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint], trace: SchedulingTrace | None
    ) -> list[Endpoint]:
        for plugin, name, observe in self._filters:
            start = perf_counter()
            endpoints = plugin.filter(cycle, request, endpoints)
            observe(perf_counter() - start)
            if trace is not None:
                trace.filtered(self.name, name, [ep.name for ep in endpoints])
            if not endpoints:
                raise NoEndpointsAvailable(f"profile {self.name!r}: filter {name} left no endpoints")
        return endpoints

    def _run_scorers(
        self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint], trace: SchedulingTrace | None
    ) -> list[ScoredEndpoint]:
        totals = [0.0] * len(endpoints)
        names = [ep.name for ep in endpoints] if trace is not None else []
        for scorer, weight, name, observe in self._scorers:
            start = perf_counter()
            scores = scorer.score(cycle, request, endpoints)
            observe(perf_counter() - start)
            if len(scores) != len(totals):
                raise ValueError(f"scorer {name} returned {len(scores)} scores for {len(totals)} endpoints")
            clamped = [s if 0.0 <= s <= 1.0 else (1.0 if s > 1.0 else 0.0) for s in scores]
            totals = [t + s * weight for t, s in zip(totals, clamped, strict=True)]
            if trace is not None:
                trace.scored(self.name, name, weight, names, clamped)
        return [ScoredEndpoint(ep, total) for ep, total in zip(endpoints, totals, strict=True)]


def _name(plugin: object) -> TypedName:
    assert isinstance(plugin, Plugin), f"{plugin!r} has no typed_name"
    return plugin.typed_name
