"""``prefix-cache-scorer``: matched leading blocks / total blocks, from the producer's match."""

from __future__ import annotations

from typing import Any

import pytest

from epp.errors import ConfigError
from epp.framework.attributes import PREFIX_MATCH_KEY, PrefixMatch
from epp.framework.scheduling import CycleState, ScorerCategory


def test_scores_are_the_matched_fraction_of_the_prompt(create: Any, make_endpoint: Any, make_request: Any) -> None:
    scorer = create("prefix-cache-scorer")
    cycle = CycleState({PREFIX_MATCH_KEY: PrefixMatch(4, 16, {"full": 4, "part": 1})})
    endpoints = [make_endpoint("full"), make_endpoint("part"), make_endpoint("none")]
    assert list(scorer.score(cycle, make_request(), endpoints)) == [1.0, 0.25, 0.0]


@pytest.mark.parametrize(
    "cycle",
    [
        pytest.param(CycleState(), id="no producer ran"),
        pytest.param(CycleState({PREFIX_MATCH_KEY: PrefixMatch(0, 16)}), id="the prompt is shorter than a block"),
        pytest.param(CycleState({PREFIX_MATCH_KEY: "garbage"}), id="the key holds something else"),
    ],
)
def test_without_blocks_every_endpoint_scores_0(create: Any, make_endpoint: Any, make_request: Any,
                                                cycle: CycleState) -> None:
    scorer = create("prefix-cache-scorer")
    assert list(scorer.score(cycle, make_request(), [make_endpoint("a"), make_endpoint("b")])) == [0.0, 0.0]


def test_prefix_scorer_is_an_affinity_scorer_consuming_prefix_matches(create: Any) -> None:
    scorer = create("prefix-cache-scorer")
    assert scorer.category() == ScorerCategory.AFFINITY
    assert set(scorer.CONSUMES) == {PREFIX_MATCH_KEY}


@pytest.mark.parametrize(
    ("params", "producer_params"),
    [
        pytest.param(None, None, id="no parameters imply nothing"),
        pytest.param({"hashBlockSize": 64}, {"blockSizeTokens": 16}, id="characters become tokens"),
        pytest.param({"hashBlockSize": 3}, {"blockSizeTokens": 1}, id="less than a token rounds up to one"),
        pytest.param({"blockSize": 32, "maxPrefixBlocksToMatch": 8, "lruCapacityPerServer": 9, "autoTune": False},
                     {"blockSizeTokens": 32, "maxPrefixBlocksToMatch": 8, "lruCapacityPerServer": 9,
                      "autoTune": False}, id="every legacy parameter maps to the producer"),
    ],
)
def test_legacy_parameters_imply_producer_parameters(create: Any, params: Any, producer_params: Any) -> None:
    assert create("prefix-cache-scorer", params).default_producer_parameters() == producer_params


@pytest.mark.parametrize("key", ["hashBlockSize", "blockSize", "maxPrefixBlocksToMatch", "lruCapacityPerServer"])
def test_legacy_sizes_must_be_positive(create: Any, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        create("prefix-cache-scorer", {key: 0})
    assert err.value.field == f"plugins[0].parameters.{key}"
