"""``token-load-scorer``: 1 - min(in-flight tokens, threshold) / threshold."""

from __future__ import annotations

from typing import Any

import pytest

from epp.errors import ConfigError
from epp.framework.scheduling import CycleState, ScorerCategory


async def cycle_with_load(create: Any, make_request: Any, routed: Any, loads: dict[Any, list[bytes]]) -> CycleState:
    """Route one request per prompt to each endpoint, then let the producer publish its counts."""
    producer = create("inflight-load-producer")
    for ep, prompts in loads.items():
        for i, prompt in enumerate(prompts):
            producer.pre_request(CycleState(), make_request(prompt, request_id=f"{ep.name}-{i}"), routed(ep))
    cycle = CycleState()
    await producer.prepare_data(cycle, make_request(), list(loads))
    return cycle


async def test_scores_fall_linearly_with_estimated_in_flight_tokens(
    create: Any, make_endpoint: Any, make_request: Any, routed: Any
) -> None:
    scorer = create("token-load-scorer", {"queueThresholdTokens": 100})
    idle, busy, full = make_endpoint("idle"), make_endpoint("busy"), make_endpoint("full")
    # 40 prompt bytes = 10 input tokens, plus 1.5x as output = 25 tokens per request.
    cycle = await cycle_with_load(create, make_request, routed,
                                  {idle: [], busy: [b"x" * 40], full: [b"x" * 40] * 5})
    assert list(scorer.score(cycle, make_request(), [idle, busy, full])) == pytest.approx([1.0, 0.75, 0.0])


async def test_the_default_threshold_is_4194304_tokens(
    create: Any, make_endpoint: Any, make_request: Any, routed: Any
) -> None:
    scorer = create("token-load-scorer")
    ep = make_endpoint("a")
    cycle = await cycle_with_load(create, make_request, routed, {ep: [b"x" * 4 * 1_048_576]})  # 2,621,440 tokens
    assert list(scorer.score(cycle, make_request(), [ep])) == pytest.approx([1 - 2_621_440 / 4_194_304])


def test_without_in_flight_data_every_endpoint_scores_1(create: Any, make_endpoint: Any, make_request: Any) -> None:
    scorer = create("token-load-scorer")
    assert list(scorer.score(CycleState(), make_request(), [make_endpoint("a"), make_endpoint("b")])) == [1.0, 1.0]


@pytest.mark.parametrize("threshold", [pytest.param(0, id="zero"), pytest.param(-5, id="negative")])
def test_a_threshold_that_is_not_positive_is_a_config_error(create: Any, threshold: int) -> None:
    with pytest.raises(ConfigError) as err:
        create("token-load-scorer", {"queueThresholdTokens": threshold})
    assert err.value.field == "plugins[0].parameters.queueThresholdTokens"


def test_token_load_is_a_distribution_scorer_consuming_in_flight_load(create: Any) -> None:
    scorer = create("token-load-scorer")
    assert scorer.category() == ScorerCategory.DISTRIBUTION
    assert set(scorer.CONSUMES) == {"InFlightLoadKey"}
