"""Which endpoint is believed to hold which prefix blocks: a bounded, approximate index.

Per endpoint, an LRU of block hashes (capacity = the endpoint's KV blocks when known,
else ``lruCapacityPerServer``); globally, block hash → endpoints holding it. Evicting a
block from an endpoint's LRU removes it from the global map, so memory is bounded by
the sum of the capacities.

Recording order matters: a request's blocks are recorded tail first, so the head of a
prefix chain is the most recently used. Under pressure the tails are evicted before the
heads, as vLLM frees a finished request's blocks from the end, and a surviving head
still matches.

Matching counts, per endpoint, the blocks of the longest prefix it holds contiguously
from the start (vLLM can only reuse a cached prefix, not scattered blocks); the Go EPP
counts any held block up to the first block nobody holds.

Concurrency: used from the event loop only; no locks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["IndexStatistics", "PrefixIndex"]


@dataclass(frozen=True, slots=True)
class IndexStatistics:
    endpoints: int
    entries: int  # (endpoint, block) pairs held
    distinct_blocks: int


class PrefixIndex:
    def __init__(self, default_capacity: int) -> None:
        if default_capacity <= 0:
            raise ValueError("default_capacity must be positive")
        self.default_capacity = default_capacity
        self._lrus: dict[str, OrderedDict[int, None]] = {}
        self._capacity: dict[str, int] = {}
        self._holders: dict[int, set[str]] = {}
        self._entries = 0

    def __len__(self) -> int:
        return self._entries

    def set_capacity(self, endpoint: str, capacity: int) -> None:
        """Resize an endpoint's LRU (e.g. once its KV block count is scraped)."""
        self._capacity[endpoint] = max(1, capacity)
        lru = self._lrus.get(endpoint)
        if lru is not None:
            self._evict(endpoint, lru)

    def capacity(self, endpoint: str) -> int:
        return self._capacity.get(endpoint, self.default_capacity)

    def record(self, endpoint: str, hashes: Sequence[int]) -> None:
        lru = self._lrus.get(endpoint)
        if lru is None:
            lru = self._lrus[endpoint] = OrderedDict()
        holders = self._holders
        for h in reversed(hashes):
            if h in lru:
                lru.move_to_end(h)
                continue
            lru[h] = None
            self._entries += 1
            owners = holders.get(h)
            if owners is None:
                holders[h] = {endpoint}
            else:
                owners.add(endpoint)
        self._evict(endpoint, lru)

    def _evict(self, endpoint: str, lru: OrderedDict[int, None]) -> None:
        excess = len(lru) - self.capacity(endpoint)
        for _ in range(max(0, excess)):
            h, _ = lru.popitem(last=False)
            self._entries -= 1
            owners = self._holders[h]
            owners.discard(endpoint)
            if not owners:
                del self._holders[h]

    def match(self, hashes: Sequence[int]) -> dict[str, int]:
        """Endpoint → number of leading blocks it holds (endpoints holding none omitted)."""
        counts: dict[str, int] = {}
        alive: set[str] | None = None
        holders = self._holders
        for depth, h in enumerate(hashes, start=1):
            owners = holders.get(h)
            if not owners:
                break
            alive = set(owners) if alive is None else alive & owners
            if not alive:
                break
            for endpoint in alive:
                counts[endpoint] = depth
        return counts

    def remove_endpoint(self, endpoint: str) -> None:
        lru = self._lrus.pop(endpoint, None)
        self._capacity.pop(endpoint, None)
        if lru is None:
            return
        for h in lru:
            owners = self._holders[h]
            owners.discard(endpoint)
            if not owners:
                del self._holders[h]
        self._entries -= len(lru)

    def statistics(self) -> IndexStatistics:
        return IndexStatistics(len(self._lrus), self._entries, len(self._holders))
