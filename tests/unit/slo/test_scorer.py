"""``latency-scorer``: headroom-based scores with the Go EPP's buckets, strategies and fallback."""

from __future__ import annotations

import random
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest

from epp.datalayer.endpoint import Endpoint, EndpointMetadata, Metrics
from epp.datalayer.pool import EndpointPool
from epp.errors import ConfigError
from epp.framework.attributes import (
    LATENCY_PREDICTIONS_KEY,
    PREFIX_MATCH_KEY,
    LatencyPrediction,
    LatencyPredictions,
    PrefixMatch,
)
from epp.framework.plugin import Handle
from epp.framework.registry import Registry
from epp.framework.scheduling import CycleState, ScorerCategory
from epp.plugins.slo.scorer import LatencyScorer
from epp.requests.types import ApiKind, InferenceRequest


def endpoint(name: str, **metrics: Any) -> Endpoint:
    ep = Endpoint(EndpointMetadata(name, "10.0.0.1", 8000, 8000, MappingProxyType({})))
    ep.metrics = Metrics(**metrics)
    return ep


def request() -> InferenceRequest:
    return InferenceRequest(request_id="r", api=ApiKind.COMPLETIONS, path="/v1/completions", model="m",
                            target_model="m", body={}, raw_body=b"{}", stream=False, headers={})


def new_handle() -> Handle:
    return Handle(pool=EndpointPool(), rng=random.Random(1))


def scorer(params: Mapping[str, Any] | None = None, handle: Handle | None = None) -> LatencyScorer:
    registry = Registry()
    registry.register(LatencyScorer)
    built = registry.create("latency-scorer", "latency-scorer", params, handle or new_handle(), "plugins[0]")
    assert isinstance(built, LatencyScorer)
    return built


def pred(ttft_headroom: float, tpot_headroom: float, *, dispatched: int = 1) -> LatencyPrediction:
    return LatencyPrediction(ttft_ms=100.0, tpot_ms=10.0, ttft_headroom_ms=ttft_headroom,
                             tpot_headroom_ms=tpot_headroom, has_ttft_slo=True, has_tpot_slo=True,
                             dispatched=dispatched)


def scores(predictions: Mapping[str, LatencyPrediction], names: list[str] | None = None,
           params: Mapping[str, Any] | None = None, cycle: CycleState | None = None,
           endpoints: list[Endpoint] | None = None) -> dict[str, float]:
    cycle = cycle if cycle is not None else CycleState()
    cycle[LATENCY_PREDICTIONS_KEY] = LatencyPredictions(dict(predictions), 500.0, 50.0)
    eps = endpoints or [endpoint(n) for n in (names or list(predictions))]
    result = scorer(params).score(cycle, request(), eps)
    return {ep.name: s for ep, s in zip(eps, result, strict=True)}


def test_defaults_and_category() -> None:
    s = scorer()
    assert s.params.ttft_weight == 0.8 and s.params.tpot_weight == 0.2
    assert s.params.headroom_selection_strategy == "least"
    assert s.category() is ScorerCategory.BALANCE


def test_yaml_keys_are_the_go_spellings() -> None:
    s = scorer({"ttftWeight": 1, "tpotWeight": 0, "headroomSelectionStrategy": "most", "compositeKVWeight": 2,
                "compositeQueueWeight": 0.5, "compositePrefixWeight": 0})
    assert (s.params.composite_kv_weight, s.params.composite_queue_weight) == (2.0, 0.5)


@pytest.mark.parametrize(("params", "field"), [
    ({"headroomSelectionStrategy": "fastest"}, "headroomSelectionStrategy"),
    ({"ttftWeight": -1}, "ttftWeight"),
    ({"compositeKVWeight": -0.1}, "compositeKVWeight"),
])
def test_bad_parameters_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        scorer(params)
    assert err.value.field == f"plugins[0].parameters.{field}"


def test_positive_least_prefers_the_endpoint_closest_to_its_slo() -> None:
    got = scores({"tight": pred(10, 1), "mid": pred(50, 3), "roomy": pred(100, 5)})
    assert got["tight"] > got["mid"] > got["roomy"] > 0
    assert got["tight"] == 1.0 and got["roomy"] == 0.01  # Go's quantisation: (int(x*100)+1)/100


def test_positive_most_prefers_the_endpoint_with_most_headroom() -> None:
    got = scores({"tight": pred(10, 1), "mid": pred(50, 3), "roomy": pred(100, 5)},
                 params={"headroomSelectionStrategy": "most"})
    assert got["roomy"] > got["mid"] > got["tight"] > 0


def test_mixed_headroom_scores_only_the_positive_endpoints() -> None:
    got = scores({"ok": pred(20, 2), "ok2": pred(40, 2), "slow": pred(-5, 2), "jerky": pred(5, -1)})
    assert got["slow"] == 0.0 and got["jerky"] == 0.0
    assert got["ok"] > 0 and got["ok2"] > 0


def test_most_strategy_never_applies_to_negative_headroom() -> None:
    # All negative, none idle, all in the both-violated bucket: the smallest deficit wins.
    got = scores({"near": pred(-5, -1), "far": pred(-500, -10)}, params={"headroomSelectionStrategy": "most"})
    assert got["near"] > got["far"]


def test_all_negative_prefers_idle_endpoints() -> None:
    got = scores({"idle": pred(-300, -5, dispatched=0), "busy": pred(-1, -1, dispatched=3)})
    assert got["busy"] == 0.0 and got["idle"] > 0


@pytest.mark.parametrize(("present", "winner"), [
    (["tpot_only", "ttft_only", "both"], "tpot_only"),
    (["ttft_only", "both"], "ttft_only"),
    (["both"], "both"),
])
def test_deficit_buckets_only_tpot_then_only_ttft_then_both(present: list[str], winner: str) -> None:
    all_buckets = {"tpot_only": pred(10, -1), "ttft_only": pred(-10, 1), "both": pred(-1, -1)}
    got = scores({name: all_buckets[name] for name in present})
    assert got[winner] > 0
    assert all(got[name] == 0.0 for name in present if name != winner)


def test_when_no_endpoint_meets_the_tpot_the_smallest_tpot_deficit_wins_not_the_least_ttft_room() -> None:
    # Only TPOT violated everywhere: the fast endpoint has TTFT room to spare and the smallest TPOT
    # deficit; the slow one barely meets the TTFT and misses the TPOT by far.
    got = scores({"fast": pred(200, -1), "slow": pred(5, -20)})
    assert got["fast"] > got["slow"]
    # Idle endpoints are ranked the same way.
    idle = scores({"fast": pred(200, -1, dispatched=0), "slow": pred(5, -20, dispatched=0)})
    assert idle["fast"] > idle["slow"]


def test_a_dimension_with_zero_range_gets_no_weight() -> None:
    # Equal TTFT headroom everywhere: the ranking comes from TPOT alone, at full spread.
    got = scores({"a": pred(50, 1), "b": pred(50, 3), "c": pred(50, 5)})
    assert (got["a"], got["c"]) == (1.0, 0.01)
    # Both dimensions flat: every endpoint gets the middle score.
    flat = scores({"a": pred(50, 2), "b": pred(50, 2)})
    assert flat["a"] == flat["b"] == 0.51


def test_weights_blend_the_two_dimensions() -> None:
    # a is best on TTFT, b on TPOT; with ttftWeight dominating a wins, and the reverse.
    predictions = {"a": pred(10, 9), "b": pred(90, 1)}
    assert scores(predictions)["a"] > scores(predictions)["b"]
    tpot_heavy = scores(predictions, params={"ttftWeight": 0.1, "tpotWeight": 0.9})
    assert tpot_heavy["b"] > tpot_heavy["a"]


def test_requests_without_objectives_prefer_the_lowest_predicted_latency() -> None:
    def no_slo(ttft: float, tpot: float) -> LatencyPrediction:
        return LatencyPrediction(ttft_ms=ttft, tpot_ms=tpot, ttft_headroom_ms=-ttft, tpot_headroom_ms=-tpot,
                                 dispatched=2)
    got = scores({"fast": no_slo(80, 8), "slow": no_slo(400, 30), "middling": no_slo(200, 20)})
    assert got["fast"] > got["middling"] > got["slow"]


def test_an_endpoint_without_a_prediction_scores_zero_when_others_have_one() -> None:
    got = scores({"a": pred(10, 1)}, names=["a", "unknown"])
    assert got == {"a": pytest.approx(0.51), "unknown": 0.0}


def test_no_predictions_falls_back_to_kv_queue_and_prefix() -> None:
    cycle = CycleState()
    cycle[PREFIX_MATCH_KEY] = PrefixMatch(total_blocks=4, block_size_tokens=16, matches={"cached": 4})
    eps = [endpoint("cached", waiting_queue_size=4, kv_cache_usage_percent=0.5),
           endpoint("empty", waiting_queue_size=0, kv_cache_usage_percent=0.0),
           endpoint("full", waiting_queue_size=2, kv_cache_usage_percent=1.0)]
    result = scorer().score(cycle, request(), eps)
    # (kvFree + relQueue + prefix) / 3, rounded to 2 decimals
    assert list(result) == [pytest.approx(0.5), pytest.approx(0.67), pytest.approx(0.17)]


def test_composite_weights_apply_and_all_zero_means_kv_only() -> None:
    eps = [endpoint("a", waiting_queue_size=0, kv_cache_usage_percent=0.9),
           endpoint("b", waiting_queue_size=9, kv_cache_usage_percent=0.1)]
    queue_only = scorer({"compositeKVWeight": 0, "compositePrefixWeight": 0}).score(CycleState(), request(), eps)
    assert list(queue_only) == [1.0, 0.0]
    kv_only = scorer({"compositeKVWeight": 0, "compositeQueueWeight": 0, "compositePrefixWeight": 0}).score(
        CycleState(), request(), eps)
    assert list(kv_only) == [pytest.approx(0.1), pytest.approx(0.9)]
