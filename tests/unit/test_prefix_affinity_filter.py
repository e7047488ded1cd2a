"""``prefix-cache-affinity-filter``: keep endpoints holding most of the prefix, with exploration."""

from __future__ import annotations

from typing import Any

import pytest

from epp.errors import ConfigError
from epp.framework.attributes import PREFIX_MATCH_KEY, PrefixMatch
from epp.framework.scheduling import CycleState
from epp.plugins.prefix.affinity_filter import PREDICTED_TTFT_KEY

NO_EXPLORATION = {"explorationProbability": 0.0}


def kept(filter_: Any, make_endpoint: Any, make_request: Any, matches: dict[str, int], names: list[str],
         total: int = 10, predictions: dict[str, float] | None = None) -> list[str]:
    cycle = CycleState({PREFIX_MATCH_KEY: PrefixMatch(total, 16, matches)})
    if predictions is not None:
        cycle[PREDICTED_TTFT_KEY] = predictions
    endpoints = [make_endpoint(n) for n in names]
    return [ep.name for ep in filter_.filter(cycle, make_request(), endpoints)]


@pytest.mark.parametrize(
    ("threshold", "matches", "expected"),
    [
        pytest.param(0.8, {"a": 10, "b": 8, "c": 7}, ["a", "b"], id="endpoints at or above the threshold are kept"),
        pytest.param(0.8, {"a": 7, "b": 2}, ["a", "b", "c"], id="no sticky endpoint keeps all"),
        pytest.param(0.5, {"c": 5}, ["c"], id="a single sticky endpoint is all that is kept"),
        pytest.param(0.0, {"a": 10}, ["a", "b", "c"], id="threshold zero disables the filter"),
        pytest.param(-1.0, {"a": 10}, ["a", "b", "c"], id="a negative threshold disables the filter"),
        pytest.param(1.0, {"a": 10, "b": 9}, ["a"], id="threshold one needs the whole prefix"),
    ],
)
def test_sticky_endpoints_are_those_at_or_above_the_threshold(
    create: Any, make_endpoint: Any, make_request: Any, threshold: float, matches: dict[str, int],
    expected: list[str],
) -> None:
    filter_ = create("prefix-cache-affinity-filter", {**NO_EXPLORATION, "affinityThreshold": threshold})
    assert kept(filter_, make_endpoint, make_request, matches, ["a", "b", "c"]) == expected


def test_a_single_candidate_is_always_kept(create: Any, make_endpoint: Any, make_request: Any) -> None:
    filter_ = create("prefix-cache-affinity-filter", NO_EXPLORATION)
    assert kept(filter_, make_endpoint, make_request, {}, ["a"]) == ["a"]


def test_without_prefix_data_all_are_kept(create: Any, make_endpoint: Any, make_request: Any) -> None:
    filter_ = create("prefix-cache-affinity-filter", NO_EXPLORATION)
    endpoints = [make_endpoint("a"), make_endpoint("b")]
    assert filter_.filter(CycleState(), make_request(), endpoints) == endpoints
    assert kept(filter_, make_endpoint, make_request, {}, ["a", "b"], total=0) == ["a", "b"]


@pytest.mark.parametrize(
    ("probability", "low", "high"),
    [
        pytest.param(0.25, 0.20, 0.30, id="a quarter of requests explore"),
        pytest.param(1.0, 1.0, 1.0, id="probability one always explores"),
        pytest.param(0.0, 0.0, 0.0, id="probability zero never explores"),
    ],
)
def test_exploration_keeps_all_with_the_configured_probability(
    create: Any, make_endpoint: Any, make_request: Any, probability: float, low: float, high: float
) -> None:
    filter_ = create("prefix-cache-affinity-filter", {"explorationProbability": probability})
    runs = 2000
    explored = sum(
        kept(filter_, make_endpoint, make_request, {"a": 10}, ["a", "b", "c"]) == ["a", "b", "c"] for _ in range(runs))
    assert low <= explored / runs <= high


def test_the_default_exploration_is_rare(create: Any, make_endpoint: Any, make_request: Any) -> None:
    filter_ = create("prefix-cache-affinity-filter")
    assert filter_.params.exploration_probability == 0.01
    explored = sum(
        kept(filter_, make_endpoint, make_request, {"a": 10}, ["a", "b"]) == ["a", "b"] for _ in range(5000))
    assert 25 <= explored <= 80


@pytest.mark.parametrize(
    ("predictions", "penalty", "expected"),
    [
        pytest.param({"a": 9000.0, "b": 1000.0}, 5000.0, ["a", "b"],
                     id="a sticky endpoint far slower than another breaks stickiness"),
        pytest.param({"a": 5500.0, "b": 1000.0}, 5000.0, ["a"], id="within the penalty stickiness holds"),
        pytest.param({"a": 6000.0, "b": 1000.0}, 5000.0, ["a"], id="exactly the penalty keeps stickiness"),
        pytest.param({"a": 900.0, "b": 1000.0}, 5000.0, ["a"], id="a faster sticky endpoint keeps stickiness"),
        pytest.param({"a": 9000.0, "b": 1000.0}, 0.0, ["a"], id="penalty zero disables the check"),
        pytest.param({}, 5000.0, ["a"], id="no predictions keep stickiness"),
        pytest.param({"a": 9000.0}, 5000.0, ["a"], id="predictions only for sticky endpoints keep stickiness"),
    ],
)
def test_ttft_penalty(create: Any, make_endpoint: Any, make_request: Any, predictions: dict[str, float],
                      penalty: float, expected: list[str]) -> None:
    filter_ = create("prefix-cache-affinity-filter", {**NO_EXPLORATION, "maxTTFTPenaltyMs": penalty})
    assert kept(filter_, make_endpoint, make_request, {"a": 10}, ["a", "b"], predictions=predictions) == expected


def test_the_best_sticky_and_best_other_prediction_are_compared(
    create: Any, make_endpoint: Any, make_request: Any
) -> None:
    filter_ = create("prefix-cache-affinity-filter", {**NO_EXPLORATION, "maxTTFTPenaltyMs": 1000})
    predictions = {"a1": 9000.0, "a2": 1500.0, "b1": 1000.0, "b2": 8000.0}
    assert kept(filter_, make_endpoint, make_request, {"a1": 10, "a2": 10}, ["a1", "a2", "b1", "b2"],
                predictions=predictions) == ["a1", "a2"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        pytest.param({"affinityThreshold": 1.5}, "affinityThreshold", id="a threshold above 1"),
        pytest.param({"explorationProbability": 1.1}, "explorationProbability", id="a probability above 1"),
        pytest.param({"explorationProbability": -0.1}, "explorationProbability", id="a negative probability"),
        pytest.param({"maxTTFTPenaltyMs": -1}, "maxTTFTPenaltyMs", id="a negative penalty"),
    ],
)
def test_invalid_parameters_name_the_field(create: Any, params: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        create("prefix-cache-affinity-filter", params)
    assert err.value.field == f"plugins[0].parameters.{field}"


def test_defaults_follow_gie(create: Any) -> None:
    p = create("prefix-cache-affinity-filter").params
    assert (p.affinity_threshold, p.exploration_probability, p.max_ttft_penalty_ms) == (0.8, 0.01, 5000.0)
