"""ObservedRequests: routed requests parked until their observation stream claims them.

Whatever happens (claimed, never observed, evicted, ids shared), every parked request
is handed out exactly once: to one observation, or to ``finish``.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from epp.request_context import ObservedRequests, RequestContext


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def registry(ttl: float = 30.0, max_size: int = 100) -> tuple[ObservedRequests, list[RequestContext], Clock]:
    finished: list[RequestContext] = []
    clock = Clock()
    return ObservedRequests(finished.append, ttl=ttl, max_size=max_size, clock=clock), finished, clock


def test_a_request_never_observed_is_released_when_its_ttl_passes() -> None:
    parked, finished, clock = registry(ttl=30.0)
    ctx = RequestContext("a")
    parked.add(ctx)
    clock.now += 29.9
    assert parked.expire() == 0 and finished == []
    clock.now += 0.2
    assert parked.expire() == 1
    assert finished == [ctx] and len(parked) == 0
    assert parked.claim("a") == (False, None)


def test_requests_sharing_an_id_are_claimed_oldest_first() -> None:
    parked, finished, _ = registry()
    first, second = RequestContext("dup"), RequestContext("dup")
    parked.add(first)
    parked.add(second)
    assert parked.claim("dup") == (True, first)
    assert parked.claim("dup") == (True, second)
    assert parked.claim("dup") == (False, None)
    assert finished == []


def test_past_its_bound_the_registry_releases_the_oldest_request() -> None:
    parked, finished, _ = registry(max_size=2)
    contexts = [RequestContext(f"r{i}") for i in range(3)]
    for ctx in contexts:
        parked.add(ctx)
    assert finished == [contexts[0]] and len(parked) == 2
    assert parked.claim("r0") == (False, None)


def test_a_request_kept_by_its_routing_stream_is_turned_away_and_never_finished_here() -> None:
    parked, finished, clock = registry()
    parked.passed("rw")
    assert parked.claim("rw") == (True, None)
    parked.passed("rw2")
    clock.now += 60
    assert parked.expire() == 1 and finished == []


async def test_an_observation_that_comes_first_gets_the_request_when_it_is_parked() -> None:
    parked, finished, _ = registry()
    ctx = RequestContext("early")
    waiting = asyncio.create_task(parked.claim_waiting("early", 5.0))
    await asyncio.sleep(0)
    parked.add(ctx)
    assert await waiting is ctx
    assert len(parked) == 0 and finished == []


async def test_an_observation_waits_only_its_grace_for_an_unknown_request() -> None:
    parked, _, _ = registry()
    assert await parked.claim_waiting("nobody", 0.01) is None
    ctx = RequestContext("nobody")
    parked.add(ctx)  # parked after the observation gave up: kept for its TTL, not handed to a dead waiter
    assert parked.claim("nobody") == (True, ctx)


async def test_the_ttl_timer_releases_without_further_traffic() -> None:
    finished: list[RequestContext] = []
    parked = ObservedRequests(finished.append, ttl=0.01)
    ctx = RequestContext("lonely")
    parked.add(ctx)
    for _ in range(200):
        if finished:
            break
        await asyncio.sleep(0.01)
    assert finished == [ctx]


operations = st.lists(st.one_of(
    st.tuples(st.just("add"), st.sampled_from("abc")),
    st.tuples(st.just("claim"), st.sampled_from("abc")),
    st.tuples(st.just("tick"), st.floats(0, 20)),
), max_size=60)


@settings(max_examples=200, deadline=None)
@given(operations, st.integers(1, 5))
def test_every_parked_request_is_handed_out_exactly_once(ops: list[tuple[str, object]], max_size: int) -> None:
    parked, finished, clock = registry(ttl=30.0, max_size=max_size)
    added: list[RequestContext] = []
    claimed: list[RequestContext] = []
    for op, arg in ops:
        if op == "add":
            ctx = RequestContext(str(arg))
            added.append(ctx)
            parked.add(ctx)
        elif op == "claim":
            found, ctx_or_none = parked.claim(str(arg))
            if found:
                assert ctx_or_none is not None and ctx_or_none.request_id == arg
                claimed.append(ctx_or_none)
        else:
            clock.now += float(arg)  # type: ignore[arg-type]
            parked.expire()
        assert len(parked) <= max_size
    clock.now += 31
    parked.expire()
    handed_out = [id(c) for c in claimed + finished]
    assert sorted(handed_out) == sorted(id(c) for c in added)
    assert len(parked) == 0
