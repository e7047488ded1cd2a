"""``metric-scorer``: endpoints scored by a custom metric; missing, stale or NaN scores worst."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from epp.datalayer.endpoint import CustomValue, Endpoint
from epp.datalayer.pool import EndpointPool
from epp.errors import ConfigError
from epp.framework.params import decode_params
from epp.framework.plugin import Handle
from epp.framework.scheduling import CycleState, ScorerCategory
from epp.plugins.scorers.metric import MetricScorer, MetricScorerParams
from epp.requests.types import InferenceRequest

NOW = 1000.0


def scorer(**raw: Any) -> MetricScorer:
    params = decode_params(MetricScorerParams, {"metricName": "q", **raw}, "parameters")
    return MetricScorer("m", params, Handle(pool=EndpointPool(), rng=random.Random(1)), clock=lambda: NOW)


def endpoints(make_endpoint: Callable[..., Endpoint], *values: float | None, age: float = 0.0) -> list[Endpoint]:
    """One endpoint per value (None: no value for the key), each updated ``age`` seconds ago."""
    eps = []
    for i, value in enumerate(values):
        ep = make_endpoint(f"e{i}")
        if value is not None:
            ep.custom["q"] = CustomValue(value, NOW - age)
        eps.append(ep)
    return eps


def scores(plugin: MetricScorer, eps: list[Endpoint], request: InferenceRequest) -> list[float]:
    return [round(s, 6) for s in plugin.score(CycleState(), request, eps)]


def test_lower_is_better_by_default_normalised_across_the_candidates(
        make_endpoint: Callable[..., Endpoint], make_request: Callable[..., InferenceRequest]) -> None:
    assert scores(scorer(), endpoints(make_endpoint, 2.0, 6.0, 4.0), make_request()) == [1.0, 0.0, 0.5]


def test_higher_is_better_normalised_across_the_candidates(
        make_endpoint: Callable[..., Endpoint], make_request: Callable[..., InferenceRequest]) -> None:
    plugin = scorer(direction="higher-is-better")
    assert scores(plugin, endpoints(make_endpoint, 2.0, 6.0, 4.0), make_request()) == [0.0, 1.0, 0.5]


def test_equal_values_all_score_one(
        make_endpoint: Callable[..., Endpoint], make_request: Callable[..., InferenceRequest]) -> None:
    assert scores(scorer(), endpoints(make_endpoint, 3.0, 3.0), make_request()) == [1.0, 1.0]


@pytest.mark.parametrize(("direction", "expected"), [
    ("lower-is-better", [1.0, 0.75, 0.0, 1.0]),
    ("higher-is-better", [0.0, 0.25, 1.0, 0.0]),
])
def test_bounds_are_fixed_and_values_outside_are_clamped(
        make_endpoint: Callable[..., Endpoint], make_request: Callable[..., InferenceRequest],
        direction: str, expected: list[float]) -> None:
    plugin = scorer(direction=direction, min=10, max=50)
    assert scores(plugin, endpoints(make_endpoint, 10.0, 20.0, 80.0, -5.0), make_request()) == expected


def test_with_bounds_a_lone_candidate_is_scored_against_them_not_against_itself(
        make_endpoint: Callable[..., Endpoint], make_request: Callable[..., InferenceRequest]) -> None:
    assert scores(scorer(min=0, max=100), endpoints(make_endpoint, 90.0), make_request()) == [0.1]


@pytest.mark.parametrize("direction", ["lower-is-better", "higher-is-better"])
@pytest.mark.parametrize("bounds", [{}, {"min": 0, "max": 100}], ids=["candidates", "bounds"])
def test_a_missing_value_scores_worst_in_either_direction(
        make_endpoint: Callable[..., Endpoint], make_request: Callable[..., InferenceRequest],
        direction: str, bounds: dict[str, float]) -> None:
    # The endpoint with no value would be the best with either reading of "nothing": it must not be.
    eps = endpoints(make_endpoint, 50.0, None, 60.0)
    result = scores(scorer(direction=direction, **bounds), eps, make_request())
    assert result[1] == 0.0
    assert max(result[0], result[2]) > 0.0


def test_a_value_under_another_key_counts_as_missing(
        make_endpoint: Callable[..., Endpoint], make_request: Callable[..., InferenceRequest]) -> None:
    ep = make_endpoint("e")
    ep.custom["other"] = CustomValue(1.0, NOW)
    assert scores(scorer(), [ep], make_request()) == [0.0]


def test_a_stale_value_scores_worst_and_a_fresh_one_at_the_limit_still_counts(
        make_endpoint: Callable[..., Endpoint], make_request: Callable[..., InferenceRequest]) -> None:
    fresh = endpoints(make_endpoint, 90.0, age=2.0)
    stale = endpoints(make_endpoint, 0.0, age=2.001)
    plugin = scorer(staleAfter="2s", min=0, max=100)
    # The stale one has the best value, and would win if its age were ignored.
    assert scores(plugin, fresh + stale, make_request()) == [0.1, 0.0]


def test_the_default_staleness_is_five_seconds(
        make_endpoint: Callable[..., Endpoint], make_request: Callable[..., InferenceRequest]) -> None:
    eps = endpoints(make_endpoint, 1.0, age=5.0) + endpoints(make_endpoint, 1.0, age=5.5)
    assert scores(scorer(), eps, make_request()) == [1.0, 0.0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("direction", ["lower-is-better", "higher-is-better"])
def test_nan_and_infinite_values_score_worst_and_do_not_spoil_the_others(
        make_endpoint: Callable[..., Endpoint], make_request: Callable[..., InferenceRequest],
        bad: float, direction: str) -> None:
    eps = endpoints(make_endpoint, 2.0, bad, 4.0)
    result = scores(scorer(direction=direction), eps, make_request())
    assert result[1] == 0.0
    assert sorted([result[0], result[2]]) == [0.0, 1.0]


def test_no_usable_value_anywhere_scores_every_endpoint_zero(
        make_endpoint: Callable[..., Endpoint], make_request: Callable[..., InferenceRequest]) -> None:
    assert scores(scorer(), endpoints(make_endpoint, None, None), make_request()) == [0.0, 0.0]
    assert scores(scorer(), [], make_request()) == []


def test_it_is_a_distribution_scorer_in_both_directions() -> None:
    assert scorer().category() is ScorerCategory.DISTRIBUTION
    assert scorer(direction="higher-is-better").category() is ScorerCategory.DISTRIBUTION


@pytest.mark.parametrize(
    ("raw", "field", "reason_part"),
    [
        pytest.param({"metricName": ""}, "parameters.metricName", "must not be empty", id="empty metric name"),
        pytest.param({"metricName": "  "}, "parameters.metricName", "must not be empty", id="blank metric name"),
        pytest.param({"direction": "lower"}, "parameters.direction", "must be one of", id="unknown direction"),
        pytest.param({"min": 5, "max": 5}, "parameters.max", "must be greater than min", id="min equal to max"),
        pytest.param({"min": 6, "max": 5}, "parameters.max", "must be greater than min", id="min above max"),
        pytest.param({"min": 5}, "parameters.max", "is required when min is set", id="min without max"),
        pytest.param({"max": 5}, "parameters.min", "is required when max is set", id="max without min"),
        pytest.param({"min": "low", "max": 5}, "parameters.min", "expected a number", id="min not a number"),
        pytest.param({"staleAfter": "0s"}, "parameters.staleAfter", "greater than 0", id="zero staleness"),
        pytest.param({"staleAfter": "soon"}, "parameters.staleAfter", "duration", id="staleness not a duration"),
    ],
)
def test_bad_parameters_name_their_field(raw: dict[str, Any], field: str, reason_part: str) -> None:
    with pytest.raises(ConfigError) as err:
        decode_params(MetricScorerParams, {"metricName": "q", **raw}, "parameters")
    assert err.value.field == field
    assert reason_part in err.value.reason


def test_metric_name_is_required() -> None:
    with pytest.raises(ConfigError) as err:
        decode_params(MetricScorerParams, {"direction": "higher-is-better"}, "parameters")
    assert err.value.field == "parameters.metricName"
