"""Store health and retry pacing, with an injected clock (no store contacted)."""

from __future__ import annotations

from epp.sharedstate.address import StoreAddress
from epp.sharedstate.store import Backoff, StateStore


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_health_says_since_when_it_is_degraded_and_why() -> None:
    clock = Clock()
    store = StateStore(StoreAddress("127.0.0.1", 1), clock=clock)
    assert not store.health.connected and store.health.last_error == "not connected yet"
    clock.now = 101.0
    store.succeeded()
    assert store.health.connected and store.health.since == 101.0
    clock.now = 102.0
    store.failed(ConnectionError("refused"))
    clock.now = 105.0
    store.failed(TimeoutError("slow"))  # still degraded: since stays at the first failure
    assert (store.health.connected, store.health.since) == (False, 102.0)
    assert store.health.last_error == "TimeoutError: slow"
    store.succeeded()
    assert store.health.connected and store.health.since == 105.0


def test_backoff_doubles_up_to_its_cap_and_a_success_resets_it() -> None:
    backoff = Backoff(0.1, 0.5)
    assert [backoff.failure() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.success()
    assert backoff.failure() == 0.1
