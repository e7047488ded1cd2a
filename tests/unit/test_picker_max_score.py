"""``max-score-picker``: the best score wins; ties are broken at random over the handle's rng."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from epp.datalayer.pool import EndpointPool
from epp.errors import ConfigError
from epp.framework.plugin import Handle
from epp.framework.scheduling import CycleState, ScoredEndpoint
from epp.plugins import default_registry


def scored(make_endpoint: Any, scores: list[float]) -> list[ScoredEndpoint]:
    return [ScoredEndpoint(make_endpoint(f"e{i}"), s) for i, s in enumerate(scores)]


def picked(picker: Any, make_request: Any, candidates: list[ScoredEndpoint]) -> list[str]:
    return [ep.name for ep in picker.pick(CycleState(), make_request(), candidates).endpoints]


def test_the_best_score_always_wins(create: Any, make_endpoint: Any, make_request: Any) -> None:
    picker = create("max-score-picker")
    rng = random.Random(42)
    for _ in range(200):
        scores = [round(rng.uniform(0, 5), 3) for _ in range(6)]
        if scores.count(max(scores)) > 1:
            continue
        assert picked(picker, make_request, scored(make_endpoint, scores)) == [f"e{scores.index(max(scores))}"]


def test_ties_for_the_best_score_are_spread_evenly(create: Any, make_endpoint: Any, make_request: Any) -> None:
    picker = create("max-score-picker")
    candidates = scored(make_endpoint, [2.0, 5.0, 5.0, 1.0, 5.0])
    counts = Counter(picked(picker, make_request, candidates)[0] for _ in range(3000))
    assert set(counts) == {"e1", "e2", "e4"}
    assert all(900 <= counts[name] <= 1100 for name in ("e1", "e2", "e4")), counts


@pytest.mark.parametrize(
    ("scores", "n", "expected_scores"),
    [
        pytest.param([0.1, 0.9, 0.5, 0.7], 3, [0.9, 0.7, 0.5], id="the top N in descending order"),
        pytest.param([0.1, 0.9], 5, [0.9, 0.1], id="N larger than the list returns all, best first"),
        pytest.param([0.3, 0.3, 0.8, 0.3], 2, [0.8, 0.3], id="a tie for the last place is filled by one of them"),
    ],
)
def test_max_num_of_endpoints_returns_the_best_first(create: Any, make_endpoint: Any, make_request: Any,
                                                     scores: list[float], n: int, expected_scores: list[float]) -> None:
    picker = create("max-score-picker", {"maxNumOfEndpoints": n})
    candidates = scored(make_endpoint, scores)
    by_name = {se.endpoint.name: se.score for se in candidates}
    for _ in range(20):
        names = picked(picker, make_request, candidates)
        assert [by_name[name] for name in names] == expected_scores
        assert len(set(names)) == len(names)


def test_ties_in_a_multi_endpoint_pick_are_shuffled(create: Any, make_endpoint: Any, make_request: Any) -> None:
    picker = create("max-score-picker", {"maxNumOfEndpoints": 3})
    candidates = scored(make_endpoint, [1.0, 1.0, 1.0])
    orders = Counter(tuple(picked(picker, make_request, candidates)) for _ in range(600))
    assert len(orders) == 6  # every permutation appears


def test_the_same_seed_gives_the_same_picks(make_endpoint: Any, make_request: Any) -> None:
    candidates = scored(make_endpoint, [1.0] * 5)
    runs = []
    for _ in range(2):
        handle = Handle(pool=EndpointPool(), rng=random.Random(9))
        picker = default_registry().create("max-score-picker", "p", None, handle, "plugins[0]")
        runs.append([picked(picker, make_request, candidates)[0] for _ in range(50)])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("value", [0, -1])
def test_max_num_of_endpoints_must_be_at_least_1(create: Any, value: int) -> None:
    with pytest.raises(ConfigError) as err:
        create("max-score-picker", {"maxNumOfEndpoints": value})
    assert err.value.field == "plugins[0].parameters.maxNumOfEndpoints"
