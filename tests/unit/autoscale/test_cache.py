"""The per-source TTL cache with a fake clock: expiry, keys, bounds and the sweep loop."""

from __future__ import annotations

import asyncio

import pytest

from epp.autoscale.cache import DEFAULT_TTL, TTLCache, cache_key


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_value_lives_until_the_ttl_is_reached(clock: FakeClock) -> None:
    cache: TTLCache[float] = TTLCache(clock=clock)
    assert cache.ttl == DEFAULT_TTL == 30.0
    cache.put("kv", {"model": "m"}, 0.5)
    clock.now += 29.999
    assert cache.get("kv", {"model": "m"}) == 0.5
    clock.now += 0.001
    assert cache.get("kv", {"model": "m"}) is None
    assert len(cache) == 0


def test_keys_use_sorted_parameters_and_keep_parameter_sets_apart(clock: FakeClock) -> None:
    cache: TTLCache[str] = TTLCache(clock=clock)
    cache.put("q", {"model": "a", "ns": "x"}, "first")
    cache.put("q", {"model": "b", "ns": "x"}, "second")
    assert cache.get("q", {"ns": "x", "model": "a"}) == "first"
    assert cache.get("q", {"model": "b", "ns": "x"}) == "second"
    assert cache.get("other", {"model": "a", "ns": "x"}) is None
    assert cache_key("q", {"b": "1", "a": "2"}) == ("q", (("a", "2"), ("b", "1")))


def test_separator_characters_in_values_cannot_make_keys_collide(clock: FakeClock) -> None:
    cache: TTLCache[str] = TTLCache(clock=clock)
    cache.put("q", {"a": "1,b=2"}, "one")
    cache.put("q", {"a": "1", "b": "2"}, "two")
    assert cache.get("q", {"a": "1,b=2"}) == "one"
    assert cache.get("q", {"a": "1", "b": "2"}) == "two"


def test_storing_again_restarts_the_ttl(clock: FakeClock) -> None:
    cache: TTLCache[int] = TTLCache(ttl=10, clock=clock)
    cache.put("q", {}, 1)
    clock.now += 8
    cache.put("q", {}, 2)
    clock.now += 8
    assert cache.get("q", {}) == 2


def test_the_oldest_entry_is_evicted_when_full(clock: FakeClock) -> None:
    cache: TTLCache[int] = TTLCache(max_entries=2, clock=clock)
    cache.put("a", {}, 1)
    clock.now += 1
    cache.put("b", {}, 2)
    clock.now += 1
    cache.put("a", {}, 3)  # re-stored: now the newest
    cache.put("c", {}, 4)
    assert len(cache) == 2
    assert cache.get("b", {}) is None
    assert (cache.get("a", {}), cache.get("c", {})) == (3, 4)


def test_expire_drops_only_stale_entries(clock: FakeClock) -> None:
    cache: TTLCache[int] = TTLCache(ttl=5, clock=clock)
    cache.put("old", {}, 1)
    clock.now += 3
    cache.put("new", {}, 2)
    clock.now += 2
    assert cache.expire() == 1
    assert len(cache) == 1 and cache.get("new", {}) == 2


async def test_the_expiry_loop_sweeps_until_cancelled(clock: FakeClock) -> None:
    cache: TTLCache[int] = TTLCache(ttl=5, clock=clock)
    cache.put("q", {}, 1)
    clock.now += 5
    task = asyncio.create_task(cache.run_expiry(0.001))
    for _ in range(500):  # bounded: ~0.5 s at most
        if len(cache) == 0:
            break
        await asyncio.sleep(0.001)
    assert len(cache) == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize(("kwargs", "message"), [({"ttl": 0}, "ttl"), ({"max_entries": 0}, "max_entries")])
def test_bad_settings_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TTLCache(**kwargs)  # type: ignore[arg-type]


async def test_the_expiry_loop_refuses_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        await TTLCache[int]().run_expiry(0)
