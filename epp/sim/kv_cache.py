"""Paged KV cache with hash-chained prefix caching and LRU eviction, after vLLM V1.

The cache has ``num_blocks`` blocks of ``block_size`` tokens. A block is in one of four
states, and only counts are kept for the anonymous ones:

* **private**: held by one request and not (yet) shareable: a partly filled tail block, or
  a full block whose hash was already cached by another request (vLLM does not merge them).
* **cached, in use**: a full block registered under its hash, held by ``ref`` requests.
* **cached, evictable**: a full block nobody holds any more. It still serves prefix hits
  until it is evicted; eviction takes the least recently freed first.
* **free**: holds nothing.

Usage (``vllm:kv_cache_usage_perc``) is ``(private + cached in use) / num_blocks``: as in vLLM,
evictable cached blocks count as free.

Block hashes chain: ``h[i] = xxh64(h[i-1] || token ids of block i)``, seeded with the LoRA
adapter and cache salt, so a block only matches when the whole prefix before it matches.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

from epp.sim.kv_events import KVEventLog

__all__ = ["PRIVATE", "KVCache", "KVCacheStats", "chain_seed", "hash_blocks"]

# Marker for a private block in a request's block list (real hashes are unsigned).
PRIVATE = -1


def chain_seed(lora: str | None, cache_salt: str | None) -> int:
    """The hash that precedes block 0: requests for different adapters never share KV."""
    return xxhash.xxh64_intdigest(f"{lora or ''}\x00{cache_salt or ''}".encode())


def hash_blocks(token_ids: Sequence[int], block_size: int, start_block: int, prev: int) -> list[int]:
    """Hashes of the full blocks from ``start_block`` on, chained from ``prev``."""
    out: list[int] = []
    full = len(token_ids) // block_size
    for i in range(start_block, full):
        chunk = array("q", token_ids[i * block_size : (i + 1) * block_size]).tobytes()
        prev = xxhash.xxh64_intdigest(prev.to_bytes(8, "little") + chunk)
        out.append(prev)
    return out


@dataclass(frozen=True, slots=True)
class KVCacheStats:
    """Block counts at one moment."""

    num_blocks: int
    used: int  # private + cached in use
    cached: int  # cached in use + evictable
    evictable: int

    @property
    def usage(self) -> float:
        return self.used / self.num_blocks


class KVCache:
    """Block accounting for one replica; owned and mutated by the scheduler only.

    Concurrency: single-threaded (event-loop owned), no locks.
    """

    __slots__ = ("num_blocks", "block_size", "caching", "events", "_ref", "_evictable", "_private")

    def __init__(self, num_blocks: int, block_size: int, *, caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.caching = caching
        # Set when the replica publishes KV events; None keeps the hot paths free of recording.
        self.events: KVEventLog | None = None
        self._ref: dict[int, int] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._private = 0

    # --- queries ------------------------------------------------------------------------
    def stats(self) -> KVCacheStats:
        return KVCacheStats(
            num_blocks=self.num_blocks,
            used=self._private + len(self._ref),
            cached=len(self._ref) + len(self._evictable),
            evictable=len(self._evictable),
        )

    @property
    def used(self) -> int:
        return self._private + len(self._ref)

    def usage(self) -> float:
        return (self._private + len(self._ref)) / self.num_blocks

    def match(self, hashes: Sequence[int], limit: int) -> tuple[int, int]:
        """Length of the cached prefix of ``hashes`` (at most ``limit`` blocks).

        Returns ``(hit_blocks, evictable_hits)``: the second is how many of those blocks sit in
        the evictable pool, so taking them reduces the free capacity.
        """
        if not self.caching:
            return 0, 0
        hits = evictable = 0
        ref, pool = self._ref, self._evictable
        for h in hashes[:limit]:
            if h in ref:
                hits += 1
            elif h in pool:
                hits += 1
                evictable += 1
            else:
                break
        return hits, evictable

    def can_allocate(self, new_blocks: int, evictable_hits: int = 0) -> bool:
        """Whether ``new_blocks`` fresh blocks fit after taking ``evictable_hits`` cached ones."""
        free = self.num_blocks - self._private - len(self._ref) - evictable_hits
        return new_blocks <= free

    # --- mutations ------------------------------------------------------------------------
    def acquire(self, hashes: Sequence[int]) -> list[int]:
        """Take a reference on cached blocks found by ``match``; returns them as block refs."""
        ref, pool = self._ref, self._evictable
        for h in hashes:
            count = ref.get(h)
            if count is None:
                del pool[h]
                ref[h] = 1
            else:
                ref[h] = count + 1
        return list(hashes)

    def allocate(self, count: int) -> list[int]:
        """Take ``count`` private blocks, evicting least recently freed cached blocks if needed.

        The caller must have checked ``can_allocate``.
        """
        free = self.num_blocks - self._private - len(self._ref) - len(self._evictable)
        log = self.events
        for _ in range(count - free if count > free else 0):
            evicted, _ = self._evictable.popitem(last=False)
            if log is not None:
                log.removed(evicted)
        self._private += count
        return [PRIVATE] * count

    def promote(self, block_hash: int) -> bool:
        """Register a private block that just filled up; False if the hash is already cached."""
        if not self.caching or block_hash in self._ref or block_hash in self._evictable:
            return False
        self._private -= 1
        self._ref[block_hash] = 1
        return True

    def release(self, blocks: Sequence[int]) -> None:
        """Drop a request's blocks, tail first, so its tail is evicted before its head."""
        ref, pool = self._ref, self._evictable
        for h in reversed(blocks):
            if h == PRIVATE:
                self._private -= 1
                continue
            count = ref[h] - 1
            if count:
                ref[h] = count
            else:
                del ref[h]
                pool[h] = None

    def reset_prefix_cache(self) -> int:
        """Forget every evictable cached block (vLLM's /reset_prefix_cache); returns how many.

        With no cached block in use the whole cache is gone (``AllBlocksCleared``, as vLLM
        reports its reset); otherwise the blocks still in use stay cached and only the dropped
        ones are reported removed, so a subscriber's view stays exact.
        """
        dropped = len(self._evictable)
        log = self.events
        if log is not None and dropped:
            if self._ref:
                for block_hash in self._evictable:
                    log.removed(block_hash)
            else:
                log.cleared()
        self._evictable.clear()
        return dropped
