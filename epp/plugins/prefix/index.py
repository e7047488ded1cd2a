"""Which endpoint is believed to hold which prefix blocks: a bounded, approximate index.

Per endpoint, an LRU of block hashes (capacity = the endpoint's KV blocks when known,
else ``lruCapacityPerServer``); globally, block hash → bitmask of the endpoints holding
it (each endpoint gets a bit). Evicting a block from an endpoint's LRU clears its bit, and
a hash with no bits left is dropped, so memory is bounded by the sum of the capacities.
Bitmasks instead of per-hash sets cut memory per entry from 387 to 171 bytes and
turn matching into integer ANDs (``benchmarks/prefix``).

Recording order matters: a request's blocks are recorded tail first, so the head of a
prefix chain is the most recently used. Under pressure the tails are evicted before the
heads, as vLLM frees a finished request's blocks from the end, and a surviving head
still matches.

Matching counts, per endpoint, the blocks of the longest prefix it holds contiguously
from the start (vLLM can only reuse a cached prefix, not scattered blocks); the Go EPP
counts any held block up to the first block nobody holds.

Replication (``epp/sharedstate``): an observer set with ``set_observer`` sees every local
``record`` (endpoint, hashes, block size in bytes) and may only queue it, as it runs on the
request path; ``apply_remote`` records what another picker replica routed without telling
the observer, so replicas never echo each other's records back.

Concurrency: used from the event loop only; no locks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["IndexStatistics", "PrefixIndex", "RecordObserver"]

# (endpoint, block hashes, block size in bytes; 0 when the recorder did not say)
RecordObserver = Callable[[str, Sequence[int], int], None]


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
        self._bit: dict[str, int] = {}  # endpoint → its bit (a power of two)
        self._names: dict[int, str] = {}  # bit → endpoint
        self._free_bits: list[int] = []
        self._holders: dict[int, int] = {}  # block hash → bitmask of endpoints
        self._entries = 0
        self._observer: RecordObserver | None = None

    def set_observer(self, observer: RecordObserver | None) -> None:
        """Tell ``observer`` about every local record from now on (``None`` stops it)."""
        self._observer = observer

    def __len__(self) -> int:
        return self._entries

    def _bit_of(self, endpoint: str) -> int:
        bit = self._bit.get(endpoint)
        if bit is None:
            bit = self._free_bits.pop() if self._free_bits else 1 << len(self._bit)
            self._bit[endpoint] = bit
            self._names[bit] = endpoint
        return bit

    def set_capacity(self, endpoint: str, capacity: int) -> None:
        """Resize an endpoint's LRU (e.g. once its KV block count is scraped)."""
        self._capacity[endpoint] = max(1, capacity)
        lru = self._lrus.get(endpoint)
        if lru is not None:
            self._evict(self._bit[endpoint], lru, self.capacity(endpoint))

    def capacity(self, endpoint: str) -> int:
        return self._capacity.get(endpoint, self.default_capacity)

    def record(self, endpoint: str, hashes: Sequence[int], block_bytes: int = 0) -> None:
        """Record that ``endpoint`` now holds ``hashes`` (a prefix chain, head first)."""
        self._record(endpoint, hashes)
        if self._observer is not None:
            self._observer(endpoint, hashes, block_bytes)

    def apply_remote(self, endpoint: str, hashes: Sequence[int]) -> None:
        """Record what another replica routed, without passing it on to the observer."""
        self._record(endpoint, hashes)

    def _record(self, endpoint: str, hashes: Sequence[int]) -> None:
        bit = self._bit_of(endpoint)
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
            holders[h] = holders.get(h, 0) | bit
        self._evict(bit, lru, self.capacity(endpoint))

    def _evict(self, bit: int, lru: OrderedDict[int, None], capacity: int) -> None:
        holders = self._holders
        for _ in range(len(lru) - capacity):
            h, _ = lru.popitem(last=False)
            self._entries -= 1
            mask = holders[h] & ~bit
            if mask:
                holders[h] = mask
            else:
                del holders[h]

    def match(self, hashes: Sequence[int]) -> dict[str, int]:
        """Endpoint → number of leading blocks it holds (endpoints holding none omitted)."""
        holders = self._holders
        alive = -1  # all bits
        depth = 0
        counts: dict[str, int] = {}
        for h in hashes:
            still = alive & holders.get(h, 0)
            if still != alive and depth:
                self._credit(alive & ~still, depth, counts)
            if not still:
                return counts
            alive = still
            depth += 1
        if depth:
            self._credit(alive, depth, counts)
        return counts

    def _credit(self, mask: int, depth: int, counts: dict[str, int]) -> None:
        while mask:
            bit = mask & -mask
            counts[self._names[bit]] = depth
            mask ^= bit

    def remove_endpoint(self, endpoint: str) -> None:
        lru = self._lrus.pop(endpoint, None)
        self._capacity.pop(endpoint, None)
        bit = self._bit.pop(endpoint, None)
        if bit is None:
            return
        del self._names[bit]
        self._free_bits.append(bit)
        if lru is None:
            return
        for h in lru:
            mask = self._holders[h] & ~bit
            if mask:
                self._holders[h] = mask
            else:
                del self._holders[h]
        self._entries -= len(lru)

    def statistics(self) -> IndexStatistics:
        return IndexStatistics(len(self._lrus), self._entries, len(self._holders))
