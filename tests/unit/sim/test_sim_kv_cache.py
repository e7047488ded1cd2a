"""Block accounting of the paged KV cache: allocation, prefix hits, LRU eviction, usage."""

from __future__ import annotations

from epp.sim.kv_cache import PRIVATE, KVCache, chain_seed, hash_blocks


def test_hashes_chain_so_a_block_only_matches_after_the_same_prefix() -> None:
    seed = chain_seed(None, None)
    a = hash_blocks(list(range(64)), 16, 0, seed)
    b = hash_blocks([99, *range(1, 64)], 16, 0, seed)
    assert len(a) == 4
    assert all(x != y for x, y in zip(a, b, strict=True))  # one changed token changes every later block
    assert hash_blocks(list(range(64)), 16, 2, a[1]) == a[2:]


def test_adapters_and_salts_never_share_blocks() -> None:
    tokens = list(range(32))
    hashes = {tuple(hash_blocks(tokens, 16, 0, chain_seed(lora, salt)))
              for lora, salt in ((None, None), ("sql", None), (None, "salt"))}
    assert len(hashes) == 3


def test_usage_counts_held_blocks_and_freed_cached_blocks_count_as_free() -> None:
    kv = KVCache(10, 16)
    blocks = kv.allocate(4)
    assert kv.usage() == 0.4
    assert kv.promote(111) and kv.promote(222)
    blocks[:2] = [111, 222]
    kv.release(blocks)
    stats = kv.stats()
    assert (stats.used, stats.cached, stats.evictable) == (0, 2, 2)
    assert kv.usage() == 0.0
    assert kv.can_allocate(10)


def test_hits_are_found_and_shared_between_requests() -> None:
    kv = KVCache(10, 16)
    first = kv.allocate(3)
    for i, h in enumerate((1, 2, 3)):
        assert kv.promote(h)
        first[i] = h
    assert kv.match([1, 2, 3, 4], limit=4) == (3, 0)
    assert kv.match([1, 9, 3], limit=3) == (1, 0)  # stops at the first miss
    assert kv.match([1, 2, 3], limit=2) == (2, 0)
    second = kv.acquire([1, 2])
    kv.release(first)
    assert kv.stats().used == 2  # the two shared blocks are still held by the second request
    assert kv.match([1, 2, 3], limit=3) == (3, 1)  # block 3 is now evictable
    kv.release(second)
    assert kv.stats().used == 0


def test_eviction_takes_the_least_recently_freed_and_the_tail_first() -> None:
    kv = KVCache(4, 16)
    a = kv.allocate(2)
    for i, h in enumerate((10, 11)):
        kv.promote(h)
        a[i] = h
    kv.release(a)  # tail (11) freed first, so it is evicted first
    b = kv.allocate(2)
    for i, h in enumerate((20, 21)):
        kv.promote(h)
        b[i] = h
    kv.release(b)
    kv.allocate(3)  # no empty block is left: evicts 11, 10 (first request, tail first), then 21
    assert kv.match([10], 1) == (0, 0)
    assert kv.match([20], 1) == (1, 1)
    assert kv.match([21], 1) == (0, 0)


def test_duplicate_blocks_stay_private_and_allocation_respects_capacity() -> None:
    kv = KVCache(3, 16)
    a = kv.allocate(1)
    assert kv.promote(5)
    a[0] = 5
    b = kv.allocate(1)
    assert not kv.promote(5)  # same content computed twice: the copy stays private
    assert b == [PRIVATE]
    assert kv.can_allocate(1) and not kv.can_allocate(2)
    assert not kv.can_allocate(1, evictable_hits=1)


def test_disabled_prefix_caching_never_hits_or_caches() -> None:
    kv = KVCache(4, 16, caching=False)
    kv.allocate(1)
    assert not kv.promote(7)
    assert kv.match([7], 1) == (0, 0)
