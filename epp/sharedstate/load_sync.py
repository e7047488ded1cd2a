"""Per-endpoint in-flight load shared between picker replicas: pushed changes plus expiring hashes.

Two paths carry a replica's load to the others:

- **Push** (latency: one Redis round trip). The in-flight producer names each endpoint whose
  local load just changed (a request routed, its first byte, its end); the push loop wakes,
  and one ``PUBLISH`` on ``<ns>:load-changes`` carries those endpoints' current counts. A
  unique 2.5k-token prompt prefills in ~150 ms: its backlog, waiting for a 200 ms round,
  had mostly left before the other replica saw it, so two replicas sent prompts onto one
  replica's prefill as if it were idle (issue 15). Changes made while a push is in flight
  go out together in the next one.
- **Round** (every ``period``, one pipelined round trip): writes this replica's whole load to
  ``<ns>:load:<replica>`` (field ``<producer>\\t<endpoint>`` → ``"requests tokens prefill"``,
  plus ``_hb`` its wall-clock heartbeat in ms, ``_gen`` and ``_seq``), removes the fields of
  endpoints that went idle, sets the key to expire after ``ttl``, registers the replica in
  the ``<ns>:replicas`` sorted set (members silent for ``forget_after`` are removed, only to
  keep the set small) and reads the hashes of the replicas the set listed last time.

The round is the truth and the push an early copy of it: pub/sub may lose messages (a
reconnect, a slow subscriber), and the next round repairs any loss. Every push and hash
carries the publisher's sequence number (with a generation that changes when a replica
restarts under the same id), so whichever arrives last, the newer value wins: a push
newer than the last hash read overrides that hash's field; a hash makes older pushes moot.

Liveness is the key's TTL, kept by Redis, so clocks need not agree: a replica that dies
stops refreshing its key and its load vanishes ``ttl`` later; no phantom load (pushed load
of a replica that is not registered, or whose key expired, is dropped at the next round). When the store cannot be read
for longer than ``ttl``, the others' load is dropped too: the replica routes on its own
counts rather than on a stale picture. Malformed fields and messages are skipped and counted.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from epp.sharedstate.store import STORE_ERRORS, StateStore, close_bounded, every, stop_if_cancelled

__all__ = ["LoadCounters", "LoadReplication", "SharesInFlightLoad", "decode_push", "encode_push"]

EndpointLoad = tuple[int, int, int]
_HEARTBEAT = b"_hb"
_GENERATION = b"_gen"
_SEQUENCE = b"_seq"
_META = frozenset({_HEARTBEAT, _GENERATION, _SEQUENCE})
_IDLE: EndpointLoad = (0, 0, 0)


@runtime_checkable
class SharesInFlightLoad(Protocol):
    """A producer whose per-endpoint in-flight load is shared (``inflight-load-producer``)."""

    def local_load(self) -> dict[str, EndpointLoad]: ...

    def set_remote_load(self, remote: Mapping[str, EndpointLoad]) -> None: ...

    def watch_local(self, on_change: Callable[[str], None] | None) -> None: ...


@dataclass(slots=True)
class LoadCounters:
    rounds: int = 0
    pushes: int = 0
    pushes_applied: int = 0
    bytes_sent: int = 0
    commands: int = 0
    bad_fields: int = 0
    peers: dict[str, float] = field(default_factory=dict)  # live peer → its last heartbeat (wall s)


def _encode(load: EndpointLoad) -> bytes:
    return b"%d %d %d" % load


# Longest number accepted from the store: anyone who can write to Redis writes these, and
# int() of a 5,000-digit string raises (Python's limit), a 1,000-digit one overflows floats.
_MAX_DIGITS = 18


def _count(raw: bytes) -> int | None:
    """A non-negative decimal of at most ``_MAX_DIGITS`` digits, else ``None``."""
    return int(raw) if raw.isdigit() and len(raw) <= _MAX_DIGITS else None


def _decode(value: bytes) -> EndpointLoad | None:
    parts = value.split()
    if len(parts) != 3:
        return None
    requests, tokens, prefill = (_count(p) for p in parts)
    if requests is None or tokens is None or prefill is None:
        return None
    return requests, tokens, prefill


def encode_push(replica: str, generation: bytes, sequence: int, fields: Mapping[bytes, EndpointLoad]) -> bytes:
    """``replica\\ngeneration sequence\\n`` then one ``"requests tokens prefill field"`` line per field."""
    lines = [replica.encode(), generation + b" %d" % sequence]
    lines += [_encode(load) + b" " + name for name, load in fields.items()]
    return b"\n".join(lines)


def decode_push(data: bytes) -> tuple[str, bytes, int, dict[bytes, EndpointLoad]] | None:
    """The inverse of ``encode_push``; ``None`` for a message that is not one."""
    lines = data.split(b"\n")
    if len(lines) < 2:
        return None
    head = lines[1].split(b" ")
    if len(head) != 2 or (sequence := _count(head[1])) is None:
        return None
    fields: dict[bytes, EndpointLoad] = {}
    for line in lines[2:]:
        parts = line.split(b" ", 3)
        load = _decode(b" ".join(parts[:3])) if len(parts) == 4 else None
        if load is None:
            return None
        fields[parts[3]] = load
    return lines[0].decode(errors="replace"), head[0], sequence, fields


def _field_key(name: bytes) -> tuple[str, str] | None:
    source, _, endpoint = name.decode(errors="replace").partition("\t")
    return (source, endpoint) if endpoint else None


@dataclass(slots=True)
class _PeerView:
    """One other replica's load as last heard, each field with the sequence number it came with."""

    generation: bytes
    floor: int = -1  # sequence of the newest hash read: pushes at or below it are older news
    fields: dict[tuple[str, str], tuple[EndpointLoad, int]] = field(default_factory=dict)  # (source, endpoint)
    heard: float = 0.0  # monotonic time of the last push or hash


class LoadReplication:
    def __init__(self, store: StateStore, namespace: str, replica_id: str,
                 producers: Mapping[str, SharesInFlightLoad], *, period: float = 0.2, ttl: float = 3.0,
                 forget_after: float = 300.0, push: bool = True, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.replica_id = replica_id
        self.key_prefix = f"{namespace}:load:"
        self.key = self.key_prefix + replica_id
        self.members = f"{namespace}:replicas"
        self.channel = f"{namespace}:load-changes"
        self.producers = dict(producers)
        self.period, self.ttl, self.forget_after = period, ttl, forget_after
        self.push = push
        self.counters = LoadCounters()
        self._clock, self._monotonic = clock, monotonic
        # None until the first round, which deletes whatever a predecessor under this id left.
        self._written: set[bytes] | None = None
        self._others: list[str] = []
        self._last_read = monotonic()
        self._sharing = False
        self.generation = os.urandom(6).hex().encode()
        self._sequence = 0
        self._views: dict[str, _PeerView] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()

    def attach(self) -> None:
        """Start noting local changes for the push loop (only when pushing)."""
        if self.push:
            for source, producer in self.producers.items():
                producer.watch_local(self._noter(source))

    def detach(self) -> None:
        for producer in self.producers.values():
            producer.watch_local(None)

    def _noter(self, source: str) -> Callable[[str], None]:
        dirty, wake = self._dirty, self._wake

        def note(endpoint: str) -> None:
            dirty.add((source, endpoint))
            wake.set()

        return note

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    async def sync_forever(self) -> None:
        await every(self.period, self.sync_once, self.store, on_failure=self.expire_if_stale)

    async def push_forever(self) -> None:
        """Publish local changes as they happen; a failed push is left to the next round to repair."""
        backoff = self.store.backoff()
        while True:
            await self._wake.wait()
            stop_if_cancelled()
            self._wake.clear()
            try:
                await self.push_once()
            except STORE_ERRORS as e:
                self.store.failed(e)
                await asyncio.sleep(backoff.failure())
                continue
            backoff.success()

    async def push_once(self) -> None:
        dirty = list(self._dirty)
        self._dirty.clear()
        if not dirty:
            return
        current = {source: producer.local_load() for source, producer in self.producers.items()}
        fields = {f"{source}\t{endpoint}".encode(): current[source].get(endpoint, _IDLE) for source, endpoint in dirty}
        payload = encode_push(self.replica_id, self.generation, self._next_sequence(), fields)
        await self.store.commands.publish(self.channel, payload)
        self.store.succeeded()
        self.counters.pushes += 1
        self.counters.commands += 1
        self.counters.bytes_sent += len(self.channel) + len(payload)

    async def follow_forever(self) -> None:
        """Apply the other replicas' pushes as they arrive (a dedicated subscriber connection)."""
        backoff = self.store.backoff()
        while True:
            client = self.store.subscriber()
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                backoff.success()
                while True:
                    stop_if_cancelled()
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self.store.block)
                    if message is not None and isinstance(message.get("data"), bytes):
                        self.receive(message["data"])
            except STORE_ERRORS as e:
                self.store.failed(e)
                await asyncio.sleep(backoff.failure())
            finally:
                await close_bounded(pubsub.aclose(), self.store.timeout)
                await close_bounded(client.aclose(), self.store.timeout)

    def receive(self, data: bytes) -> None:
        """Apply one pushed message (another replica's changed endpoints)."""
        decoded = decode_push(data)
        if decoded is None:
            self.counters.bad_fields += 1
            return
        replica, generation, sequence, fields = decoded
        if replica == self.replica_id or not self._sharing:
            # Pushes only refine what a round built: while rounds fail (the store refuses
            # writes but still relays PUBLISH, or reads time out) the pushed load would never
            # expire, as completions after the first byte are not pushed.
            return
        view = self._views.get(replica)
        if view is None or view.generation != generation:
            view = self._views[replica] = _PeerView(generation)
        if sequence <= view.floor:
            return  # the last hash read was already newer
        for name, load in fields.items():
            key = _field_key(name)
            if key is None:
                self.counters.bad_fields += 1
                continue
            held = view.fields.get(key)
            if held is None or held[1] < sequence:
                view.fields[key] = (load, sequence)
        view.heard = self._monotonic()
        self.counters.pushes_applied += 1
        self._publish_sums()

    def _own_fields(self, now_ms: int) -> dict[bytes, bytes]:
        fields = {_HEARTBEAT: b"%d" % now_ms, _GENERATION: self.generation, _SEQUENCE: b"%d" % self._next_sequence()}
        for source, producer in self.producers.items():
            for endpoint, load in producer.local_load().items():
                fields[f"{source}\t{endpoint}".encode()] = _encode(load)
        return fields

    async def sync_once(self) -> None:
        now_ms = int(self._clock() * 1000)
        fields = self._own_fields(now_ms)
        first = self._written is None
        gone = set() if self._written is None else self._written - fields.keys()
        others = self._others
        pipe = self.store.commands.pipeline(transaction=False)
        if first:
            # A replica restarted under the same id within the TTL must not inherit the dead
            # one's fields (HSET keeps fields it is not given): that would be phantom load.
            pipe.delete(self.key)
        pipe.hset(self.key, mapping=fields)  # type: ignore[arg-type]
        if gone:
            pipe.hdel(self.key, *gone)
        pipe.pexpire(self.key, int(self.ttl * 1000))
        pipe.zadd(self.members, {self.replica_id: now_ms})
        pipe.zremrangebyscore(self.members, 0, now_ms - int(self.forget_after * 1000))
        pipe.zrange(self.members, 0, -1)
        for other in others:
            pipe.hgetall(self.key_prefix + other)
        replies = await pipe.execute()
        self.store.succeeded()
        self._written = set(fields)
        counters = self.counters
        counters.rounds += 1
        counters.commands += 5 + bool(gone) + first + len(others)
        counters.bytes_sent += len(self.key) + sum(len(k) + len(v) for k, v in fields.items())
        members: list[bytes] = replies[-1 - len(others)]
        self._others = [m.decode(errors="replace") for m in members if m.decode(errors="replace") != self.replica_id]
        self.apply_round(others, replies[len(replies) - len(others):] if others else [])

    def apply_round(self, others: list[str], hashes: list[dict[bytes, bytes]]) -> None:
        """Take in the hashes read this round (empty: that replica expired); pushes newer than a hash stay."""
        now = self._monotonic()
        peers: dict[str, float] = {}
        for replica, values in zip(others, hashes, strict=True):
            if not values:
                self._views.pop(replica, None)  # expired: that replica is gone
                continue
            heartbeat = values.get(_HEARTBEAT, b"")
            peers[replica] = (_count(heartbeat) or 0) / 1000
            self._apply_hash(replica, values, now)
        # A replica no longer registered stopped (a graceful stop unregisters at once): its
        # pushed load goes too. One that pushed before registering is heard again next round.
        listed = set(others) | set(self._others)
        for replica in [r for r in self._views if r not in listed]:
            del self._views[replica]
        self.counters.peers = peers
        self._last_read = now
        self._sharing = True
        self._publish_sums()

    def _apply_hash(self, replica: str, values: dict[bytes, bytes], now: float) -> None:
        generation = values.get(_GENERATION, b"")
        raw_sequence = values.get(_SEQUENCE, b"0")
        sequence = _count(raw_sequence) or 0
        view = self._views.get(replica)
        if view is None or view.generation != generation:
            view = self._views[replica] = _PeerView(generation)
        elif sequence < view.floor:
            return  # an older hash than one already read
        fields: dict[tuple[str, str], tuple[EndpointLoad, int]] = {}
        for name, value in values.items():
            if name in _META:
                continue
            load, key = _decode(value), _field_key(name)
            if load is None or key is None:
                self.counters.bad_fields += 1
                continue
            fields[key] = (load, sequence)
        # Pushes newer than this hash still hold.
        fields.update((name, held) for name, held in view.fields.items() if held[1] > sequence)
        view.fields, view.floor, view.heard = fields, sequence, now

    def _publish_sums(self) -> None:
        sums: dict[str, dict[str, EndpointLoad]] = {source: {} for source in self.producers}
        for view in self._views.values():
            for (source, endpoint), (load, _) in view.fields.items():
                target = sums.get(source)
                if target is None or load == _IDLE:
                    continue  # a producer this replica does not run, or an endpoint gone idle
                r, t, p = target.get(endpoint, _IDLE)
                target[endpoint] = (r + load[0], t + load[1], p + load[2])
        for source, producer in self.producers.items():
            producer.set_remote_load(sums[source])

    def expire_if_stale(self) -> None:
        """Forget the others' load once it is older than its own TTL (store unreachable)."""
        if self._sharing and self._monotonic() - self._last_read > self.ttl:
            self._views.clear()
            for producer in self.producers.values():
                producer.set_remote_load({})
            self.counters.peers = {}
            self._sharing = False

    async def remove_own(self) -> None:
        """A graceful stop: this replica's load leaves at once instead of after the TTL."""
        pipe = self.store.commands.pipeline(transaction=False)
        pipe.delete(self.key)
        pipe.zrem(self.members, self.replica_id)
        await pipe.execute()
