"""``kv-cache-utilization-scorer``: 1 - KV-cache usage, not normalised across endpoints."""

from __future__ import annotations

from typing import Any

import pytest

from epp.framework.scheduling import CycleState, ScorerCategory


@pytest.mark.parametrize(
    ("usage", "scores"),
    [
        pytest.param([0.0, 0.25, 1.0], [1.0, 0.75, 0.0], id="score is one minus usage"),
        pytest.param([0.5, 0.5], [0.5, 0.5], id="equal usage is not stretched to 1"),
        pytest.param([0.9], [0.1], id="a single endpoint keeps its absolute score"),
    ],
)
def test_kv_cache_scores(create: Any, make_endpoint: Any, make_request: Any, usage: list[float],
                         scores: list[float]) -> None:
    scorer = create("kv-cache-utilization-scorer")
    endpoints = [make_endpoint(f"e{i}", kv_cache_usage_percent=u) for i, u in enumerate(usage)]
    assert list(scorer.score(CycleState(), make_request(), endpoints)) == pytest.approx(scores)


def test_kv_cache_scorer_is_a_distribution_scorer(create: Any) -> None:
    assert create("kv-cache-utilization-scorer").category() == ScorerCategory.DISTRIBUTION
