"""The admin server's token bucket, on an injected clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.server.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_admits_the_burst_then_refuses() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    decisions = [bucket.acquire() for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[0].retry_after == 0.0
    assert decisions[3].retry_after == pytest.approx(0.1)  # one token at 10/s
    assert decisions[3].until_full == pytest.approx(0.3)


def test_tokens_come_back_at_the_rate_and_never_above_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=4, clock=clock)
    for _ in range(4):
        assert bucket.acquire().allowed
    clock.now += 0.5  # one token
    assert bucket.acquire().allowed
    assert not bucket.acquire().allowed
    clock.now += 3600  # an idle hour refills to the burst, not to 7200
    assert [bucket.acquire().allowed for _ in range(5)] == [True, True, True, True, False]


def test_retry_after_is_the_wait_for_one_token() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=0.25, burst=1, clock=clock)
    assert bucket.acquire().allowed
    refused = bucket.acquire()
    assert not refused.allowed and refused.retry_after == pytest.approx(4.0)
    clock.now += 3.0
    assert bucket.acquire().retry_after == pytest.approx(1.0)
    clock.now += 1.0
    assert bucket.acquire().allowed


def test_a_clock_stepping_back_does_not_drain_or_fill_the_bucket() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=1, burst=2, clock=clock)
    assert bucket.acquire().allowed
    clock.now -= 100
    decision = bucket.acquire()
    assert decision.allowed and decision.remaining == 0
    assert not bucket.acquire().allowed


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (math.inf, 1), (math.nan, 1), (1, 0)])
def test_invalid_rate_or_burst_is_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.5, 500), burst=st.integers(1, 50),
       steps=st.lists(st.floats(0, 2), min_size=1, max_size=200))
def test_never_admits_more_than_burst_plus_rate_times_elapsed(rate: float, burst: int, steps: list[float]) -> None:
    clock = Clock()
    start = clock.now
    bucket = TokenBucket(rate, burst, clock)
    admitted = 0
    for step in steps:
        clock.now += step
        decision = bucket.acquire()
        admitted += decision.allowed
        assert 0 <= decision.remaining <= burst
        assert (decision.retry_after == 0) == decision.allowed
        assert admitted <= burst + rate * (clock.now - start) + 1e-6
