"""Prefill backlog (in-flight producer) and the ``prefill-load-scorer`` that reads it."""

from __future__ import annotations

from typing import Any

import pytest

from epp.framework.attributes import INFLIGHT_LOAD_KEY, PREFIX_MATCH_KEY, PrefixMatch
from epp.framework.requestcontrol import ResponseInfo
from epp.framework.scheduling import CycleState


def cycle_with(producer: Any, match: PrefixMatch | None = None) -> CycleState:
    cycle = CycleState()
    cycle[INFLIGHT_LOAD_KEY] = producer.load
    if match is not None:
        cycle[PREFIX_MATCH_KEY] = match
    return cycle


def test_a_routed_request_is_backlog_until_its_first_chunk(create: Any, make_endpoint: Any, make_request: Any,
                                                           routed: Any) -> None:
    producer = create("inflight-load-producer")
    a = make_endpoint("a")
    request = make_request(b"x" * 4000)
    producer.pre_request(CycleState(), request, routed(a))
    assert producer.load.prefill_backlog("a") == 1000
    producer.response_streaming(request, ResponseInfo(), b"data: first\n\n")
    assert producer.load.prefill_backlog("a") == 0
    producer.response_streaming(request, ResponseInfo(), b"data: second\n\n")
    assert producer.load.prefill_backlog("a") == 0  # only the first chunk releases it
    assert producer.load.requests("a") == 1  # still in flight (decoding)
    producer.response_complete(request, ResponseInfo())
    assert (producer.load.requests("a"), producer.load.prefill_backlog("a")) == (0, 0)


def test_a_request_that_ends_before_any_chunk_releases_its_backlog(create: Any, make_endpoint: Any,
                                                                  make_request: Any, routed: Any) -> None:
    producer = create("inflight-load-producer")
    request = make_request(b"x" * 4000)
    producer.pre_request(CycleState(), request, routed(make_endpoint("a")))
    producer.response_complete(request, ResponseInfo())  # client disconnected while queued
    assert producer.load.prefill_backlog("a") == 0


def test_backlog_excludes_blocks_the_endpoint_already_holds(create: Any, make_endpoint: Any, make_request: Any,
                                                            routed: Any) -> None:
    producer = create("inflight-load-producer")
    match = PrefixMatch(total_blocks=10, block_size_tokens=16, matches={"a": 8})
    producer.pre_request(cycle_with(producer, match), make_request(b"x" * 640), routed(make_endpoint("a")))
    assert producer.load.prefill_backlog("a") == 160 - 8 * 16


@pytest.mark.parametrize(
    ("backlogs", "matches", "expected"),
    [
        pytest.param({}, {}, [1.0, 1.0, 1.0], id="idle endpoints and no cache: all equal"),
        pytest.param({"a": 1000}, {}, [0.5, 1.0, 1.0], id="a backlog as long as the prompt halves the score"),
        pytest.param({}, {"b": 50}, [0.2, 1.0, 0.2], id="holding most of the prompt makes an endpoint cheaper"),
        pytest.param({"b": 4000}, {"b": 62}, [1.0, 0.25, 1.0],
                     id="a cached endpoint with a long backlog loses to idle ones"),
    ],
)
def test_prefill_load_score_is_cheapest_cost_over_cost(create: Any, make_endpoint: Any, make_request: Any,
                                                       routed: Any, backlogs: dict[str, int],
                                                       matches: dict[str, int], expected: list[float]) -> None:
    producer = create("inflight-load-producer")
    scorer = create("prefill-load-scorer")
    endpoints = [make_endpoint(name) for name in "abc"]
    for name, tokens in backlogs.items():  # build the backlog with real routed requests
        producer.pre_request(CycleState(), make_request(b"x" * tokens * 4), routed(make_endpoint(name)))
    match = PrefixMatch(total_blocks=63, block_size_tokens=16, matches=matches)
    request = make_request(b"x" * 4000)  # 1000 tokens
    scores = scorer.score(cycle_with(producer, match), request, endpoints)
    assert scores == pytest.approx(expected, abs=0.01)


def test_prefill_load_scorer_without_its_producer_scores_by_cache_only(create: Any, make_endpoint: Any,
                                                                        make_request: Any) -> None:
    scorer = create("prefill-load-scorer")
    scores = scorer.score(CycleState(), make_request(b"x" * 400), [make_endpoint("a"), make_endpoint("b")])
    assert scores == [1.0, 1.0]
