"""``running-requests-size-scorer``: min-max normalised inverse of running requests."""

from __future__ import annotations

from typing import Any

import pytest

from epp.framework.scheduling import CycleState, ScorerCategory


@pytest.mark.parametrize(
    ("running", "scores"),
    [
        pytest.param([0, 2, 8], [1.0, 0.75, 0.0], id="fewest running scores 1 and most 0"),
        pytest.param([3, 3], [1.0, 1.0], id="equal counts all score 1"),
        pytest.param([9], [1.0], id="a single endpoint scores 1"),
    ],
)
def test_running_requests_scores(create: Any, make_endpoint: Any, make_request: Any, running: list[int],
                                 scores: list[float]) -> None:
    scorer = create("running-requests-size-scorer")
    endpoints = [make_endpoint(f"e{i}", running_requests_size=r) for i, r in enumerate(running)]
    assert list(scorer.score(CycleState(), make_request(), endpoints)) == pytest.approx(scores)


def test_running_requests_scorer_ignores_the_waiting_queue(create: Any, make_endpoint: Any,
                                                          make_request: Any) -> None:
    scorer = create("running-requests-size-scorer")
    endpoints = [make_endpoint("a", running_requests_size=1, waiting_queue_size=50),
                 make_endpoint("b", running_requests_size=5)]
    assert list(scorer.score(CycleState(), make_request(), endpoints)) == [1.0, 0.0]


def test_running_requests_scorer_is_a_distribution_scorer(create: Any) -> None:
    assert create("running-requests-size-scorer").category() == ScorerCategory.DISTRIBUTION
