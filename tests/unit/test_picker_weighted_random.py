"""``weighted-random-picker``: probability proportional to score (A-Res reservoir sampling)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from epp.framework.scheduling import CycleState, ScoredEndpoint

DRAWS = 20_000


def scored(make_endpoint: Any, scores: list[float]) -> list[ScoredEndpoint]:
    return [ScoredEndpoint(make_endpoint(f"e{i}"), s) for i, s in enumerate(scores)]


def picked(picker: Any, make_request: Any, candidates: list[ScoredEndpoint]) -> list[str]:
    return [ep.name for ep in picker.pick(CycleState(), make_request(), candidates).endpoints]


@pytest.mark.parametrize(
    "scores",
    [
        pytest.param([1.0, 2.0, 3.0, 4.0], id="scores within 0..1 range and above"),
        pytest.param([0.1, 0.9], id="a strong and a weak endpoint"),
        pytest.param([2.0, 6.0], id="weighted sums above 1"),
        pytest.param([0.5, 0.5, 0.5], id="equal scores"),
    ],
)
def test_frequencies_are_proportional_to_scores(create: Any, make_endpoint: Any, make_request: Any,
                                                scores: list[float]) -> None:
    picker = create("weighted-random-picker")
    candidates = scored(make_endpoint, scores)
    counts = Counter(picked(picker, make_request, candidates)[0] for _ in range(DRAWS))
    total = sum(scores)
    for i, score in enumerate(scores):
        assert counts[f"e{i}"] / DRAWS == pytest.approx(score / total, abs=0.015), (counts, scores)


def test_zero_scores_are_never_picked_while_a_positive_one_is_available(
    create: Any, make_endpoint: Any, make_request: Any
) -> None:
    picker = create("weighted-random-picker")
    candidates = scored(make_endpoint, [0.0, 2.0, 0.0, 1.0])
    counts = Counter(picked(picker, make_request, candidates)[0] for _ in range(3000))
    assert set(counts) == {"e1", "e3"}


def test_zero_scores_fill_only_the_places_positive_ones_cannot(
    create: Any, make_endpoint: Any, make_request: Any
) -> None:
    picker = create("weighted-random-picker", {"maxNumOfEndpoints": 3})
    candidates = scored(make_endpoint, [0.0, 2.0, 0.0, 1.0, 0.0])
    fillers: Counter[str] = Counter()
    for _ in range(600):
        names = picked(picker, make_request, candidates)
        assert set(names[:2]) == {"e1", "e3"}
        assert names[2] in {"e0", "e2", "e4"}
        fillers[names[2]] += 1
    assert set(fillers) == {"e0", "e2", "e4"}


def test_all_zero_scores_give_a_uniform_choice(create: Any, make_endpoint: Any, make_request: Any) -> None:
    picker = create("weighted-random-picker")
    candidates = scored(make_endpoint, [0.0, 0.0, 0.0, 0.0])
    counts = Counter(picked(picker, make_request, candidates)[0] for _ in range(4000))
    assert set(counts) == {"e0", "e1", "e2", "e3"}
    assert all(850 <= c <= 1150 for c in counts.values()), counts


def test_a_multi_endpoint_pick_returns_distinct_endpoints_favouring_high_scores(
    create: Any, make_endpoint: Any, make_request: Any
) -> None:
    picker = create("weighted-random-picker", {"maxNumOfEndpoints": 2})
    candidates = scored(make_endpoint, [1.0, 1.0, 8.0])
    firsts: Counter[str] = Counter()
    for _ in range(2000):
        names = picked(picker, make_request, candidates)
        assert len(names) == 2 and len(set(names)) == 2
        firsts[names[0]] += 1
    assert firsts["e2"] / 2000 == pytest.approx(0.8, abs=0.04)
