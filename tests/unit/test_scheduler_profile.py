"""A scheduling profile: filters in order, clamped weighted scores, one picker, a decision trace."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.framework.plugin import BasePlugin, Handle, TypedName
from epp.framework.scheduling import CycleState, ProfileRunResult, ScoredEndpoint, ScorerCategory
from epp.requests.types import InferenceRequest
from epp.scheduling.profile import NoEndpointsAvailable, SchedulerProfile, WeightedScorer
from epp.scheduling.trace import DecisionTrace


class DropFilter(BasePlugin):
    """Removes the named endpoints and writes down what it saw (test double)."""

    TYPE = "drop-filter"

    def __init__(self, name: str, drop: set[str], log: list[tuple[str, list[str]]], handle: Handle) -> None:
        super().__init__(name, None, handle)
        self.drop = drop
        self.log = log

    def filter(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        self.log.append((self.typed_name.name, [ep.name for ep in endpoints]))
        return [ep for ep in endpoints if ep.name not in self.drop]


class FixedScorer(BasePlugin):
    """Returns the given scores whatever the endpoints (test double)."""

    TYPE = "fixed-scorer"

    def __init__(self, name: str, scores: list[float], handle: Handle) -> None:
        super().__init__(name, None, handle)
        self.scores = scores

    def category(self) -> ScorerCategory:
        return ScorerCategory.BALANCE

    def score(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> Sequence[float]:
        return self.scores


class RecordingPicker(BasePlugin):
    """Keeps the scored list it was given and returns the first endpoint (test double)."""

    TYPE = "recording-picker"

    def __init__(self, name: str, handle: Handle) -> None:
        super().__init__(name, None, handle)
        self.seen: list[ScoredEndpoint] = []

    def pick(self, cycle: CycleState, request: InferenceRequest, scored: list[ScoredEndpoint]) -> ProfileRunResult:
        self.seen = scored
        return ProfileRunResult([scored[0].endpoint])


def totals(picker: RecordingPicker) -> dict[str, float]:
    return {se.endpoint.name: se.score for se in picker.seen}


def test_filters_run_in_order_each_on_the_previous_output(handle: Handle, make_endpoint: Any,
                                                          make_request: Any) -> None:
    log: list[tuple[str, list[str]]] = []
    picker = RecordingPicker("p", handle)
    profile = SchedulerProfile("default", [DropFilter("first", {"a"}, log, handle),
                                           DropFilter("second", {"c"}, log, handle)], [], picker)
    endpoints = [make_endpoint(n) for n in "abcd"]
    result = profile.run(CycleState(), make_request(), endpoints)
    assert log == [("first", ["a", "b", "c", "d"]), ("second", ["b", "c", "d"])]
    assert [se.endpoint.name for se in picker.seen] == ["b", "d"]
    assert [ep.name for ep in result.endpoints] == ["b"]


def test_a_filter_leaving_nothing_ends_the_profile_before_later_filters(handle: Handle, make_endpoint: Any,
                                                                        make_request: Any) -> None:
    log: list[tuple[str, list[str]]] = []
    picker = RecordingPicker("p", handle)
    profile = SchedulerProfile("default", [DropFilter("all", {"a", "b"}, log, handle),
                                           DropFilter("never", set(), log, handle)], [], picker)
    with pytest.raises(NoEndpointsAvailable, match="left no endpoints"):
        profile.run(CycleState(), make_request(), [make_endpoint("a"), make_endpoint("b")])
    assert [name for name, _ in log] == ["all"]
    assert picker.seen == []


def test_real_scorers_are_summed_with_their_weights(create: Any, handle: Handle, make_endpoint: Any,
                                                    make_request: Any) -> None:
    picker = RecordingPicker("p", handle)
    profile = SchedulerProfile("default", [], [WeightedScorer(create("queue-scorer"), 2.0),
                                               WeightedScorer(create("kv-cache-utilization-scorer"), 3.0)], picker)
    endpoints = [make_endpoint("a", waiting_queue_size=0, kv_cache_usage_percent=0.9),
                 make_endpoint("b", waiting_queue_size=10, kv_cache_usage_percent=0.1),
                 make_endpoint("c", waiting_queue_size=5, kv_cache_usage_percent=0.5)]
    profile.run(CycleState(), make_request(), endpoints)
    assert totals(picker) == pytest.approx({"a": 2 * 1.0 + 3 * 0.1, "b": 0.0 + 3 * 0.9, "c": 2 * 0.5 + 3 * 0.5})


@pytest.mark.parametrize(
    ("raw", "clamped"),
    [
        pytest.param(1.5, 1.0, id="above one is clamped to one"),
        pytest.param(-0.5, 0.0, id="below zero is clamped to zero"),
        pytest.param(math.nan, 0.0, id="NaN counts as zero"),
        pytest.param(math.inf, 1.0, id="infinity is clamped to one"),
        pytest.param(-math.inf, 0.0, id="minus infinity is clamped to zero"),
        pytest.param(0.25, 0.25, id="in range is unchanged"),
    ],
)
def test_scores_are_clamped_to_the_unit_range_before_weighting(handle: Handle, make_endpoint: Any,
                                                               make_request: Any, raw: float, clamped: float) -> None:
    picker = RecordingPicker("p", handle)
    profile = SchedulerProfile("default", [], [WeightedScorer(FixedScorer("s", [raw], handle), 2.0)], picker)
    profile.run(CycleState(), make_request(), [make_endpoint("a")])
    assert totals(picker) == {"a": 2 * clamped}


@pytest.mark.parametrize("scores", [pytest.param([1.0], id="too few"), pytest.param([1.0, 1.0, 1.0], id="too many")])
def test_a_scorer_returning_the_wrong_number_of_scores_is_an_error(handle: Handle, make_endpoint: Any,
                                                                    make_request: Any, scores: list[float]) -> None:
    profile = SchedulerProfile("default", [], [WeightedScorer(FixedScorer("odd", scores, handle), 1.0)],
                               RecordingPicker("p", handle))
    with pytest.raises(ValueError, match=r"scorer odd/fixed-scorer returned \d scores for 2 endpoints"):
        profile.run(CycleState(), make_request(), [make_endpoint("a"), make_endpoint("b")])


def test_without_scorers_every_endpoint_scores_zero(handle: Handle, make_endpoint: Any, make_request: Any) -> None:
    picker = RecordingPicker("p", handle)
    SchedulerProfile("default", [], [], picker).run(CycleState(), make_request(), [make_endpoint("a"),
                                                                                     make_endpoint("b")])
    assert totals(picker) == {"a": 0.0, "b": 0.0}


def test_the_trace_records_filters_clamped_scores_and_the_pick(handle: Handle, make_endpoint: Any,
                                                              make_request: Any) -> None:
    log: list[tuple[str, list[str]]] = []
    profile = SchedulerProfile(
        "default", [DropFilter("drop-c", {"c"}, log, handle)],
        [WeightedScorer(FixedScorer("s1", [2.0, 0.5], handle), 2.0),
         WeightedScorer(FixedScorer("s2", [0.0, 1.0], handle), 1.0)],
        RecordingPicker("p", handle))
    trace = DecisionTrace("req-1", "m", ["a", "b", "c"])
    profile.run(CycleState(), make_request(), [make_endpoint(n) for n in "abc"], trace)
    assert trace.as_dict() == {
        "requestId": "req-1", "model": "m", "candidates": ["a", "b", "c"], "destination": [],
        "profiles": {"default": {
            "filters": [{"plugin": "drop-c/drop-filter", "kept": ["a", "b"]}],
            "scorers": [{"plugin": "s1/fixed-scorer", "weight": 2.0, "scores": {"a": 1.0, "b": 0.5}},
                        {"plugin": "s2/fixed-scorer", "weight": 1.0, "scores": {"a": 0.0, "b": 1.0}}],
            "picked": ["a"],
            "totals": {"a": 2.0, "b": 2.0},
        }},
    }


def test_every_plugin_call_is_timed_by_extension_point(handle: Handle, make_endpoint: Any,
                                                       make_request: Any) -> None:
    observed: list[tuple[str, str, float]] = []

    def observer(point: str, name: TypedName) -> Any:
        return lambda seconds: observed.append((point, str(name), seconds))

    log: list[tuple[str, list[str]]] = []
    profile = SchedulerProfile("default", [DropFilter("f", set(), log, handle)],
                               [WeightedScorer(FixedScorer("s", [1.0], handle), 1.0)],
                               RecordingPicker("p", handle), observer)
    profile.run(CycleState(), make_request(), [make_endpoint("a")])
    assert [(point, name) for point, name, _ in observed] == [
        ("Filter", "f/drop-filter"), ("Scorer", "s/fixed-scorer"), ("Picker", "p/recording-picker")]
    assert all(seconds >= 0 for _, _, seconds in observed)
