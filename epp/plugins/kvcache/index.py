"""Which KV-cache blocks each endpoint really holds, from its own events.

Every stored block is indexed under its content key (``keys.block_key`` of its parent's
content key, its token ids and LoRA id), so a request's keys computed from its prompt by
``keys.block_keys`` find it without reproducing the model server's block hash. Per endpoint
and data-parallel rank a map from the engine's block hash to the content key lets
``BlockStored`` chain through ``parent_block_hash`` and ``BlockRemoved`` (which carries only
engine hashes) find what to drop.

Decisions:

- Unknown parent: a ``BlockStored`` whose parent hash this index does not know (its store
  event came before we subscribed, was lost, or was evicted from this index) is skipped and
  counted (``unknownParents``). Chaining from the root instead would give keys that match a
  different prompt that merely starts with these tokens: a false hit. Skipping loses
  nothing a match could use, because a match counts leading blocks only and stops at the
  parent this index lacks.
- Several engine hashes may map to one content key (the same tokens under different
  multimodal inputs or cache salts, which keys do not see): a content key is held while at
  least one engine hash refers to it.
- Only the GPU tier (``medium`` "GPU" or absent; configurable) and the first KV-cache group
  (``group_idx`` 0 or absent) are indexed; other events are counted as ``ignored``. A block
  removed from the GPU but kept on the CPU is a miss for prefill on this replica's GPU.
- Bound: at most ``max_blocks_per_endpoint`` blocks per endpoint and rank; beyond that the
  least recently stored block is forgotten (``evicted``). A forgotten block makes later
  matches stop there, never claim more than the replica holds.
- Data-parallel ranks are indexed separately (their hashes and evictions are independent)
  and matched as one endpoint: the longest prefix any rank holds.
- Speculative blocks (``speculate``, llm-d's ``speculativeIndexing``): the picker adds the
  content keys of the blocks a request it just routed will create, so the requests sharing
  that prefix which arrive before the replica reports them stored find them (the blind
  window between routing and ``BlockStored``). Each lives until its TTL, until a
  ``BlockStored`` with the same content key confirms it (then it is an ordinary block), or
  until a ``BlockRemoved`` / clear of that key on the endpoint drops it: the replica's own
  word always wins over the guess. They are per endpoint, not per rank (the picker does not
  know which rank serves a request), count towards every rank's leading run, and are bounded
  like the confirmed blocks (oldest dropped first).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from epp.plugins.kvcache.events import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch, KVEvent
from epp.plugins.kvcache.keys import ROOT_KEY, block_key

__all__ = ["KVBlockIndex"]

_RATE_WINDOW_SECONDS = 10.0


class _Replica:
    """The blocks of one (endpoint, data-parallel rank)."""

    __slots__ = ("key_by_hash", "refs")

    def __init__(self) -> None:
        # Insertion order is the order of the last store: the first entry is evicted first.
        self.key_by_hash: dict[int, int] = {}
        self.refs: dict[int, int] = {}  # content key -> engine hashes referring to it

    def store(self, engine_hash: int, key: int) -> None:
        old = self.key_by_hash.pop(engine_hash, None)
        if old is not None:
            self._release(old)
        self.key_by_hash[engine_hash] = key
        self.refs[key] = self.refs.get(key, 0) + 1

    def remove(self, engine_hash: int) -> int | None:
        key = self.key_by_hash.pop(engine_hash, None)
        if key is not None:
            self._release(key)
        return key

    def evict_oldest(self) -> None:
        self.remove(next(iter(self.key_by_hash)))

    def _release(self, key: int) -> None:
        left = self.refs[key] - 1
        if left:
            self.refs[key] = left
        else:
            del self.refs[key]

    def leading(self, keys: Sequence[int], speculative: Mapping[int, float]) -> int:
        refs = self.refs
        count = 0
        for key in keys:
            if key not in refs and key not in speculative:
                break
            count += 1
        return count


def _leading_speculative(keys: Sequence[int], speculative: Mapping[int, float]) -> int:
    count = 0
    for key in keys:
        if key not in speculative:
            break
        count += 1
    return count


class _EndpointState:
    __slots__ = ("block_size", "confirmed", "errors", "events", "evicted", "expired", "gaps", "ignored",
                 "last_sequence", "rate", "replicas", "resets", "speculative", "unknown_parents", "window_events",
                 "window_start")

    def __init__(self, now: float) -> None:
        self.replicas: dict[int, _Replica] = {}
        self.block_size: int | None = None
        self.last_sequence: int | None = None
        self.events = self.gaps = self.resets = self.errors = 0
        self.unknown_parents = self.ignored = self.evicted = 0
        # content key -> expiry; insertion order is expiry order (one TTL per index user)
        self.speculative: dict[int, float] = {}
        self.confirmed = self.expired = 0
        self.window_start = now
        self.window_events = 0
        self.rate: float | None = None

    def blocks(self) -> int:
        return sum(len(r.key_by_hash) for r in self.replicas.values())

    def holds(self, key: int) -> bool:
        return any(key in r.refs for r in self.replicas.values())

    def expire(self, now: float) -> None:
        speculative = self.speculative
        while speculative:
            key, expiry = next(iter(speculative.items()))
            if expiry > now:
                break
            del speculative[key]
            self.expired += 1


class KVBlockIndex:
    """Per-endpoint index of the KV blocks each replica holds, fed by decoded events."""

    def __init__(self, max_blocks_per_endpoint: int = 1_000_000, *, media: Iterable[str] = ("GPU",),
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_blocks_per_endpoint < 1:
            raise ValueError(f"max_blocks_per_endpoint must be at least 1, got {max_blocks_per_endpoint}")
        self._max_blocks = max_blocks_per_endpoint
        self._media = frozenset(media)
        self._clock = clock
        self._endpoints: dict[str, _EndpointState] = {}

    def _state(self, endpoint: str) -> _EndpointState:
        state = self._endpoints.get(endpoint)
        if state is None:
            state = self._endpoints[endpoint] = _EndpointState(self._clock())
        return state

    def apply_batch(self, endpoint: str, batch: EventBatch) -> None:
        """Apply every event of ``batch`` to its rank of ``endpoint`` and record its sequence number."""
        state = self._state(endpoint)
        rank = batch.data_parallel_rank or 0
        for event in batch.events:
            self.apply(endpoint, event, rank)
        state.ignored += batch.skipped
        state.last_sequence = batch.seq
        self._count(state, len(batch.events) + batch.skipped)

    def apply(self, endpoint: str, event: KVEvent, rank: int = 0) -> None:
        state = self._state(endpoint)
        if isinstance(event, AllBlocksCleared):
            state.replicas.pop(rank, None)
            state.speculative.clear()
            return
        if (event.medium is not None and event.medium not in self._media) or event.group_idx not in (None, 0):
            state.ignored += 1
            return
        replica = state.replicas.get(rank)
        if isinstance(event, BlockRemoved):
            if replica is not None:
                speculative = state.speculative
                for engine_hash in event.block_hashes:
                    key = replica.remove(engine_hash)
                    if key is not None and speculative:
                        speculative.pop(key, None)
            return
        if replica is None:
            replica = state.replicas[rank] = _Replica()
        self._store(state, replica, event)

    def _store(self, state: _EndpointState, replica: _Replica, event: BlockStored) -> None:
        parent = ROOT_KEY
        if event.parent_block_hash is not None:
            known = replica.key_by_hash.get(event.parent_block_hash)
            if known is None:
                state.unknown_parents += 1
                return
            parent = known
        state.block_size = event.block_size
        size = event.block_size
        tokens = event.token_ids
        speculative = state.speculative
        for i, engine_hash in enumerate(event.block_hashes):
            parent = block_key(parent, tokens[i * size:(i + 1) * size], event.lora_id)
            replica.store(engine_hash, parent)
            if speculative and speculative.pop(parent, None) is not None:
                state.confirmed += 1
        while len(replica.key_by_hash) > self._max_blocks:
            replica.evict_oldest()
            state.evicted += 1

    def _count(self, state: _EndpointState, events: int) -> None:
        now = self._clock()
        state.events += events
        state.window_events += events
        elapsed = now - state.window_start
        if elapsed >= _RATE_WINDOW_SECONDS:
            state.rate = state.window_events / elapsed
            state.window_start = now
            state.window_events = 0

    def clear(self, endpoint: str, *, gap: bool = False, reset: bool = False, error: bool = False) -> None:
        """Forget ``endpoint``'s blocks (all ranks) after a loss, keeping its counters; say why."""
        state = self._state(endpoint)
        state.replicas.clear()
        state.speculative.clear()
        state.last_sequence = None
        state.gaps += gap
        state.resets += reset
        state.errors += error

    def record_error(self, endpoint: str) -> None:
        self._state(endpoint).errors += 1

    def record_gap(self, endpoint: str) -> None:
        """A gap that replay filled: counted, nothing forgotten."""
        self._state(endpoint).gaps += 1

    def last_sequence(self, endpoint: str) -> int | None:
        state = self._endpoints.get(endpoint)
        return None if state is None else state.last_sequence

    def speculate(self, endpoint: str, keys: Sequence[int], ttl: float) -> int:
        """Expect ``endpoint`` to hold ``keys`` soon (a request was just routed there with this
        prompt): they match for ``ttl`` seconds unless confirmed or removed first. Keys the
        endpoint already holds are skipped. Returns how many were added or renewed."""
        if ttl <= 0 or not keys:
            return 0
        state = self._state(endpoint)
        now = self._clock()
        state.expire(now)
        speculative = state.speculative
        expiry = now + ttl
        added = 0
        for key in keys:
            if state.holds(key):
                continue
            speculative.pop(key, None)  # renewed: moves to the end, keeping expiry order
            speculative[key] = expiry
            added += 1
        while len(speculative) > self._max_blocks:
            del speculative[next(iter(speculative))]
            state.evicted += 1
        return added

    def match(self, keys: Sequence[int], endpoints: Sequence[str]) -> dict[str, int]:
        """Per endpoint, how many leading ``keys`` it holds or is expected to hold (stops at the first it lacks)."""
        result: dict[str, int] = {}
        now: float | None = None
        for endpoint in endpoints:
            state = self._endpoints.get(endpoint)
            best = 0
            if state is not None:
                speculative = state.speculative
                if speculative:
                    if now is None:
                        now = self._clock()
                    state.expire(now)
                    best = _leading_speculative(keys, speculative)
                for replica in state.replicas.values():
                    if best == len(keys):
                        break
                    best = max(best, replica.leading(keys, speculative))
            result[endpoint] = best
        return result

    def block_size(self, endpoint: str) -> int | None:
        state = self._endpoints.get(endpoint)
        return None if state is None else state.block_size

    def purge(self, endpoint: str) -> None:
        self._endpoints.pop(endpoint, None)

    def stats(self, endpoint: str) -> dict[str, Any]:
        """For ``/debug/endpoints``: blocks indexed, last sequence, events per second, gaps, ..."""
        known = self._endpoints.get(endpoint)
        state = known or _EndpointState(0.0)  # never heard of: every count zero
        rate = state.rate
        if rate is None and known is not None:
            elapsed = self._clock() - state.window_start
            rate = state.window_events / elapsed if elapsed > 0 else None
        return {"blocks": state.blocks(), "lastSequence": state.last_sequence,
                "eventsPerSecond": None if rate is None else round(rate, 3), "gaps": state.gaps,
                "resets": state.resets, "errors": state.errors, "events": state.events,
                "unknownParents": state.unknown_parents, "ignored": state.ignored, "evicted": state.evicted,
                "blockSize": state.block_size, "ranks": sorted(state.replicas),
                "speculative": len(state.speculative), "speculativeConfirmed": state.confirmed,
                "speculativeExpired": state.expired}

    def debug_sizes(self) -> dict[str, int]:
        return {"endpoints": len(self._endpoints),
                "replicas": sum(len(s.replicas) for s in self._endpoints.values()),
                "blocks": sum(s.blocks() for s in self._endpoints.values()),
                "contentKeys": sum(len(r.refs) for s in self._endpoints.values() for r in s.replicas.values()),
                "speculative": sum(len(s.speculative) for s in self._endpoints.values())}
