"""``queue-scorer``: min-max normalised inverse of the waiting queue length."""

from __future__ import annotations

from typing import Any

import pytest

from epp.framework.scheduling import CycleState, ScorerCategory


@pytest.mark.parametrize(
    ("queues", "scores"),
    [
        pytest.param([0, 5, 10], [1.0, 0.5, 0.0], id="the shortest queue scores 1 and the longest 0"),
        pytest.param([2, 3], [1.0, 0.0], id="two endpoints are 1 and 0 whatever the gap"),
        pytest.param([50, 1], [0.0, 1.0], id="order of endpoints does not matter"),
        pytest.param([4, 4, 4], [1.0, 1.0, 1.0], id="equal queues all score 1"),
        pytest.param([0, 0], [1.0, 1.0], id="empty queues all score 1"),
        pytest.param([7], [1.0], id="a single endpoint scores 1"),
        pytest.param([], [], id="no endpoints give no scores"),
    ],
)
def test_queue_scores(create: Any, make_endpoint: Any, make_request: Any, queues: list[int],
                      scores: list[float]) -> None:
    scorer = create("queue-scorer")
    endpoints = [make_endpoint(f"e{i}", waiting_queue_size=q) for i, q in enumerate(queues)]
    assert list(scorer.score(CycleState(), make_request(), endpoints)) == pytest.approx(scores)


def test_queue_scorer_only_reads_the_waiting_queue(create: Any, make_endpoint: Any, make_request: Any) -> None:
    scorer = create("queue-scorer")
    endpoints = [make_endpoint("a", waiting_queue_size=1, running_requests_size=100, kv_cache_usage_percent=1.0),
                 make_endpoint("b", waiting_queue_size=3)]
    assert list(scorer.score(CycleState(), make_request(), endpoints)) == [1.0, 0.0]


def test_queue_scorer_is_a_distribution_scorer(create: Any) -> None:
    assert create("queue-scorer").category() == ScorerCategory.DISTRIBUTION
