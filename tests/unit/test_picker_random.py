"""``random-picker``: uniform choice that ignores scores."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from epp.framework.scheduling import CycleState, ScoredEndpoint


def scored(make_endpoint: Any, scores: list[float]) -> list[ScoredEndpoint]:
    return [ScoredEndpoint(make_endpoint(f"e{i}"), s) for i, s in enumerate(scores)]


def picked(picker: Any, make_request: Any, candidates: list[ScoredEndpoint]) -> list[str]:
    return [ep.name for ep in picker.pick(CycleState(), make_request(), candidates).endpoints]


def test_choices_are_uniform_whatever_the_scores(create: Any, make_endpoint: Any, make_request: Any) -> None:
    picker = create("random-picker")
    candidates = scored(make_endpoint, [0.0, 10.0, 0.5, 3.0])
    counts = Counter(picked(picker, make_request, candidates)[0] for _ in range(4000))
    assert set(counts) == {"e0", "e1", "e2", "e3"}
    assert all(850 <= c <= 1150 for c in counts.values()), counts


@pytest.mark.parametrize(
    ("n", "size"),
    [pytest.param(2, 2, id="N distinct endpoints"), pytest.param(10, 3, id="at most every endpoint once")],
)
def test_max_num_of_endpoints_picks_distinct_endpoints(create: Any, make_endpoint: Any, make_request: Any,
                                                       n: int, size: int) -> None:
    picker = create("random-picker", {"maxNumOfEndpoints": n})
    for _ in range(20):
        names = picked(picker, make_request, scored(make_endpoint, [1.0, 2.0, 3.0]))
        assert len(names) == size and len(set(names)) == size
