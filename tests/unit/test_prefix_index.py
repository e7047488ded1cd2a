"""The bounded prefix index: per-endpoint LRUs, tail-first eviction, contiguous matching."""

from __future__ import annotations

import random
import zlib

import pytest

from epp.plugins.prefix.index import IndexStatistics, PrefixIndex


def chain(tag: str, n: int) -> list[int]:
    """n distinct fake block hashes for a request named ``tag`` (head first)."""
    base = zlib.crc32(tag.encode()) * 1000
    return [base + i for i in range(1, n + 1)]


def held(index: PrefixIndex, endpoint: str, hashes: list[int]) -> list[int]:
    """The hashes ``endpoint`` holds, found through the public ``match``."""
    return [h for h in hashes if endpoint in index.match([h])]


def test_capacity_is_never_exceeded_under_random_load() -> None:
    rng = random.Random(3)
    index = PrefixIndex(default_capacity=10)
    index.set_capacity("small", 5)
    index.set_capacity("mid", 7)
    capacities = {"small": 5, "mid": 7, "default": 10}
    prefixes = [chain(f"p{i}", rng.randrange(1, 12)) for i in range(15)]
    seen: set[int] = set()
    for _ in range(300):
        endpoint = rng.choice(list(capacities))
        hashes = rng.choice(prefixes)[: rng.randrange(1, 12)]
        index.record(endpoint, hashes)
        seen.update(hashes)
        per_endpoint = {ep: len(held(index, ep, sorted(seen))) for ep in capacities}
        assert all(per_endpoint[ep] <= cap for ep, cap in capacities.items()), per_endpoint
        assert len(index) == sum(per_endpoint.values())
    stats = index.statistics()
    assert stats.endpoints == 3 and stats.entries == len(index)


def test_a_long_request_keeps_its_head_when_over_capacity() -> None:
    index = PrefixIndex(default_capacity=4)
    a = chain("a", 6)
    index.record("e", a)
    assert held(index, "e", a) == a[:4]
    assert index.match(a) == {"e": 4}


def test_eviction_takes_tails_before_heads() -> None:
    index = PrefixIndex(default_capacity=4)
    a, b = chain("a", 4), chain("b", 2)
    index.record("e", a)
    index.record("e", b)
    assert held(index, "e", a) == a[:2]  # a's two tail blocks went first
    assert index.match(a) == {"e": 2}
    assert index.match(b) == {"e": 2}


def test_recording_again_refreshes_a_prefix() -> None:
    index = PrefixIndex(default_capacity=3)
    a, b, c = chain("a", 1), chain("b", 2), chain("c", 1)
    index.record("e", a)
    index.record("e", b)
    index.record("e", a)  # a is now the most recently used
    index.record("e", c)  # evicts the least recently used: b's tail
    assert index.match(a) == {"e": 1}
    assert index.match(b) == {"e": 1}
    assert index.match(c) == {"e": 1}


@pytest.mark.parametrize(
    ("holdings", "query", "expected"),
    [
        pytest.param({"x": [0, 1, 2], "y": [0]}, [0, 1, 2, 3], {"x": 3, "y": 1},
                     id="each endpoint counts its own leading blocks"),
        pytest.param({"x": [0, 2]}, [0, 1, 2], {"x": 1}, id="a gap ends an endpoint's match"),
        pytest.param({"x": [0, 1], "y": [0, 2, 3]}, [0, 1, 2, 3], {"x": 2, "y": 1},
                     id="blocks after an endpoint's gap do not count even if others continue"),
        pytest.param({"x": [1, 2, 3]}, [0, 1, 2, 3], {}, id="nothing matches without the first block"),
        pytest.param({"x": [0, 1]}, [], {}, id="an empty prompt matches nothing"),
    ],
)
def test_matching_counts_contiguous_leading_blocks(holdings: dict[str, list[int]], query: list[int],
                                                   expected: dict[str, int]) -> None:
    blocks = chain("q", 4)
    index = PrefixIndex(default_capacity=100)
    for endpoint, positions in holdings.items():
        for position in positions:
            index.record(endpoint, [blocks[position]])
    assert index.match([blocks[i] for i in query]) == expected


def test_removing_an_endpoint_purges_all_its_blocks() -> None:
    index = PrefixIndex(default_capacity=100)
    a, b = chain("a", 3), chain("b", 2)
    index.record("x", a)
    index.record("y", a[:1])
    index.record("x", b)
    index.remove_endpoint("x")
    assert index.match(a) == {"y": 1}
    assert index.match(b) == {}
    assert index.statistics() == IndexStatistics(endpoints=1, entries=1, distinct_blocks=1)
    index.remove_endpoint("unknown")  # no error
    assert len(index) == 1


def test_removing_an_endpoint_forgets_its_capacity() -> None:
    index = PrefixIndex(default_capacity=100)
    index.set_capacity("x", 2)
    index.remove_endpoint("x")
    assert index.capacity("x") == 100


def test_shrinking_capacity_evicts_down_to_the_heads() -> None:
    index = PrefixIndex(default_capacity=10)
    a = chain("a", 6)
    index.record("e", a)
    index.set_capacity("e", 3)
    assert index.capacity("e") == 3
    assert held(index, "e", a) == a[:3]
    assert len(index) == 3


def test_capacity_set_before_any_record_applies_on_first_record() -> None:
    index = PrefixIndex(default_capacity=10)
    index.set_capacity("e", 2)
    index.record("e", chain("a", 5))
    assert len(index) == 2


def test_capacity_is_at_least_one_block() -> None:
    index = PrefixIndex(default_capacity=10)
    index.set_capacity("e", 0)
    assert index.capacity("e") == 1


def test_a_block_held_by_two_endpoints_survives_eviction_from_one() -> None:
    index = PrefixIndex(default_capacity=1)
    a, b = chain("a", 1), chain("b", 1)
    index.record("x", a)
    index.record("y", a)
    index.record("x", b)
    assert index.match(a) == {"y": 1}
    assert index.statistics() == IndexStatistics(endpoints=2, entries=2, distinct_blocks=2)


def test_default_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        PrefixIndex(default_capacity=0)


def test_the_observer_sees_local_records_but_not_remote_ones() -> None:
    index = PrefixIndex(default_capacity=10)
    seen: list[tuple[str, list[int], int]] = []
    index.set_observer(lambda endpoint, hashes, block_bytes: seen.append((endpoint, list(hashes), block_bytes)))
    index.record("a", chain("local", 3), 64)
    index.apply_remote("b", chain("remote", 2))
    assert seen == [("a", chain("local", 3), 64)]
    assert index.match(chain("remote", 2)) == {"b": 2}  # applied all the same
    index.set_observer(None)
    index.record("a", chain("later", 1))
    assert len(seen) == 1


def test_remote_records_obey_the_same_capacity_and_recency() -> None:
    index = PrefixIndex(default_capacity=4)
    index.record("e", chain("old", 3))
    index.apply_remote("e", chain("new", 3))
    assert held(index, "e", chain("new", 3)) == chain("new", 3)
    assert held(index, "e", chain("old", 3)) == chain("old", 3)[:1]  # the head survives, tails went first
