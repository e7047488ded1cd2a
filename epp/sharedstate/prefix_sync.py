"""Approximate prefix index updates shared between picker replicas through a Redis stream.

Publishing: the index's observer (``PrefixOutbox.observer``) runs on the request path and
only appends a tuple to a bounded queue; when the store is slow the oldest records are
dropped and counted. Every ``flush_interval`` the queue is sent as batches (one XADD each,
``MAXLEN ~`` keeps the stream bounded), tagged with this replica's id.

Applying: a blocking XREAD follows the stream and records every other replica's records
into the local index with ``apply_remote`` (which does not publish them again). A new
replica starts from the oldest retained entry, so it warms up from the recent history.
Entries from this replica, malformed entries, records whose block size differs from the
size this replica records with and records for endpoints outside this replica's pool are
skipped and counted; none of them can stop the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from epp.plugins.prefix.index import PrefixIndex, RecordObserver
from epp.sharedstate.codec import CodecError, PrefixRecord, decode_batch, encode_batch
from epp.sharedstate.store import STORE_ERRORS, StateStore, stop_if_cancelled

__all__ = ["PrefixCounters", "PrefixOutbox", "PrefixReplication"]

_REPLICA = b"r"
_PAYLOAD = b"v"

# Block sizes remembered per source: one per model whose prompts are hashed differently.
_RECENT_SIZES = 16


@dataclass(slots=True)
class PrefixCounters:
    records_sent: int = 0
    batches_sent: int = 0
    bytes_sent: int = 0
    records_applied: int = 0
    entries_read: int = 0
    bad_entries: int = 0
    block_size_mismatches: int = 0
    unknown_sources: int = 0
    unknown_endpoints: int = 0
    lag_seconds: float | None = None  # age of the newest applied entry when it was applied


class PrefixOutbox:
    """Records waiting to be published; at most ``limit``, the oldest dropped first."""

    def __init__(self, limit: int) -> None:
        self._queue: deque[PrefixRecord] = deque()
        self.limit = limit
        self.dropped = 0
        # Per source, the block sizes its recent local records used (one per model in use, at
        # most _RECENT_SIZES): a remote record of another size cannot match, so it is skipped.
        self.block_bytes: dict[str, dict[int, None]] = {}

    def __len__(self) -> int:
        return len(self._queue)

    def observer(self, source: str) -> RecordObserver:
        queue, limit, sizes = self._queue, self.limit, self.block_bytes

        def observe(endpoint: str, hashes: Sequence[int], block_bytes: int) -> None:
            if len(queue) >= limit:
                queue.popleft()
                self.dropped += 1
            queue.append(PrefixRecord(source, endpoint, block_bytes, hashes))
            recent = sizes.setdefault(source, {})
            if block_bytes not in recent:
                recent[block_bytes] = None
                if len(recent) > _RECENT_SIZES:
                    del recent[next(iter(recent))]

        return observe

    def take(self, n: int) -> list[PrefixRecord]:
        queue = self._queue
        return [queue.popleft() for _ in range(min(n, len(queue)))]


class PrefixReplication:
    def __init__(self, store: StateStore, stream: str, replica_id: str, indexes: Mapping[str, PrefixIndex], *,
                 flush_interval: float = 0.025, max_batch: int = 256, outbox_limit: int = 2048,
                 stream_maxlen: int = 256, read_count: int = 10, is_member: Callable[[str], bool] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.stream = stream
        self.replica_id = replica_id
        self._own = replica_id.encode()
        self.indexes = dict(indexes)
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.stream_maxlen = stream_maxlen
        # Entries per read: each is applied on the event loop in one go (up to 256 records of up
        # to 256 hashes), so a warm-up from the whole stream yields to requests between reads.
        self.read_count = read_count
        self.outbox = PrefixOutbox(outbox_limit)
        self.counters = PrefixCounters()
        # Records for endpoints this replica's pool does not have (left, or not yet seen) are
        # skipped: the index purges an endpoint only when the pool removes it.
        self._is_member = is_member
        self._clock = clock
        self._last_id = b"0-0"

    def attach(self) -> None:
        for source, index in self.indexes.items():
            index.set_observer(self.outbox.observer(source))

    def detach(self) -> None:
        for index in self.indexes.values():
            index.set_observer(None)

    # Publishing -------------------------------------------------------------------------

    async def publish_forever(self) -> None:
        backoff = self.store.backoff()
        while True:
            await asyncio.sleep(self.flush_interval)
            stop_if_cancelled()
            try:
                await self.flush()
            except STORE_ERRORS as e:
                self.store.failed(e)
                await asyncio.sleep(backoff.failure())
            else:
                backoff.success()

    async def flush(self) -> None:
        """Send everything queued, one entry per ``max_batch`` records; a failed batch is dropped."""
        while self.outbox:
            batch = self.outbox.take(self.max_batch)
            payload = encode_batch(batch)
            try:
                await self.store.commands.xadd(self.stream, {_REPLICA: self._own, _PAYLOAD: payload},
                                               maxlen=self.stream_maxlen, approximate=True)
            except STORE_ERRORS:
                self.outbox.dropped += len(batch)
                raise
            self.store.succeeded()
            counters = self.counters
            counters.records_sent += len(batch)
            counters.batches_sent += 1
            counters.bytes_sent += len(payload) + len(self._own)

    # Applying ---------------------------------------------------------------------------

    async def follow_forever(self) -> None:
        backoff = self.store.backoff()
        block_ms = max(1, int(self.store.block * 1000))
        while True:
            stop_if_cancelled()
            try:
                reply = await self.store.reader.xread({self.stream: self._last_id}, count=self.read_count,
                                                      block=block_ms)
            except STORE_ERRORS as e:
                self.store.failed(e)
                await asyncio.sleep(backoff.failure())
                continue
            backoff.success()
            self.store.succeeded()
            self.apply_reply(reply)

    def apply_reply(self, reply: Any) -> None:
        """XREAD's reply: ``[[stream, [(id, {field: value}), ...]]]`` (``None`` after a quiet block)."""
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                self._last_id = entry_id
                self.apply_entry(entry_id, fields)

    def apply_entry(self, entry_id: bytes, fields: Mapping[bytes, bytes]) -> None:
        counters = self.counters
        counters.entries_read += 1
        if fields.get(_REPLICA) == self._own:
            return
        try:
            records = decode_batch(fields[_PAYLOAD])
        except (KeyError, CodecError):
            counters.bad_entries += 1
            return
        sizes = self.outbox.block_bytes
        for source, endpoint, block_bytes, hashes in records:
            index = self.indexes.get(source)
            if index is None:
                counters.unknown_sources += 1
                continue
            local = sizes.get(source)
            if local and block_bytes and block_bytes not in local:
                counters.block_size_mismatches += 1
                continue
            if self._is_member is not None and not self._is_member(endpoint):
                counters.unknown_endpoints += 1
                continue
            index.apply_remote(endpoint, hashes)
            counters.records_applied += 1
        millis = entry_id.split(b"-", 1)[0]
        if millis.isdigit():
            counters.lag_seconds = max(0.0, self._clock() - int(millis) / 1000)
