"""Per-endpoint in-flight load shared between picker replicas: one expiring hash per replica.

Every ``period`` each replica, in one pipelined round trip:

- writes its own load to ``<ns>:load:<replica>`` (field ``<producer>\\t<endpoint>`` →
  ``"requests tokens prefill"``, plus ``_hb``, its wall-clock heartbeat in ms), removes the
  fields of endpoints that went idle, and sets the key to expire after ``ttl``;
- registers itself in the ``<ns>:replicas`` sorted set (score: heartbeat; members silent
  for ``forget_after`` are removed, only to keep the set small);
- reads the hashes of the replicas the set listed last time.

Liveness is the key's TTL, kept by Redis, so clocks need not agree: a replica that dies
stops refreshing its key and its load vanishes ``ttl`` later; no phantom load. When the
store cannot be read for longer than ``ttl``, the others' load is dropped too: the replica
routes on its own counts rather than on a stale picture. Malformed fields are skipped
and counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from epp.sharedstate.store import STORE_ERRORS, StateStore

__all__ = ["LoadCounters", "LoadReplication", "SharesInFlightLoad"]

EndpointLoad = tuple[int, int, int]
_HEARTBEAT = b"_hb"


@runtime_checkable
class SharesInFlightLoad(Protocol):
    """A producer whose per-endpoint in-flight load is shared (``inflight-load-producer``)."""

    def local_load(self) -> dict[str, EndpointLoad]: ...

    def set_remote_load(self, remote: Mapping[str, EndpointLoad]) -> None: ...


@dataclass(slots=True)
class LoadCounters:
    rounds: int = 0
    bytes_sent: int = 0
    commands: int = 0
    bad_fields: int = 0
    peers: dict[str, float] = field(default_factory=dict)  # live peer → its last heartbeat (wall s)


def _encode(load: EndpointLoad) -> bytes:
    return b"%d %d %d" % load


def _decode(value: bytes) -> EndpointLoad | None:
    parts = value.split()
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


class LoadReplication:
    def __init__(self, store: StateStore, namespace: str, replica_id: str,
                 producers: Mapping[str, SharesInFlightLoad], *, period: float = 0.2, ttl: float = 3.0,
                 forget_after: float = 300.0, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.replica_id = replica_id
        self.key_prefix = f"{namespace}:load:"
        self.key = self.key_prefix + replica_id
        self.members = f"{namespace}:replicas"
        self.producers = dict(producers)
        self.period, self.ttl, self.forget_after = period, ttl, forget_after
        self.counters = LoadCounters()
        self._clock, self._monotonic = clock, monotonic
        self._written: set[bytes] = set()
        self._others: list[str] = []
        self._last_read = monotonic()
        self._sharing = False

    async def sync_forever(self) -> None:
        backoff = self.store.backoff()
        while True:
            try:
                await self.sync_once()
            except STORE_ERRORS as e:
                self.store.failed(e)
                self.expire_if_stale()
                await asyncio.sleep(max(self.period, backoff.failure()))
                continue
            backoff.success()
            await asyncio.sleep(self.period)

    def _own_fields(self, now_ms: int) -> dict[bytes, bytes]:
        fields = {_HEARTBEAT: b"%d" % now_ms}
        for source, producer in self.producers.items():
            for endpoint, load in producer.local_load().items():
                fields[f"{source}\t{endpoint}".encode()] = _encode(load)
        return fields

    async def sync_once(self) -> None:
        now_ms = int(self._clock() * 1000)
        fields = self._own_fields(now_ms)
        gone = self._written - fields.keys()
        others = self._others
        pipe = self.store.commands.pipeline(transaction=False)
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
        counters.commands += 5 + bool(gone) + len(others)
        counters.bytes_sent += len(self.key) + sum(len(k) + len(v) for k, v in fields.items())
        members: list[bytes] = replies[-1 - len(others)]
        self._others = [m.decode(errors="replace") for m in members if m.decode(errors="replace") != self.replica_id]
        self._apply(others, replies[len(replies) - len(others):] if others else [])

    def _apply(self, others: list[str], hashes: list[dict[bytes, bytes]]) -> None:
        sums: dict[str, dict[str, EndpointLoad]] = {source: {} for source in self.producers}
        peers: dict[str, float] = {}
        for replica, values in zip(others, hashes, strict=True):
            if not values:
                continue  # expired: that replica is gone
            heartbeat = values.get(_HEARTBEAT, b"")
            peers[replica] = int(heartbeat) / 1000 if heartbeat.isdigit() else 0.0
            for name, value in values.items():
                if name == _HEARTBEAT:
                    continue
                source, _, endpoint = name.decode(errors="replace").partition("\t")
                load = _decode(value)
                target = sums.get(source)
                if load is None or not endpoint:
                    self.counters.bad_fields += 1
                    continue
                if target is None:
                    continue  # a producer this replica does not run
                r, t, p = target.get(endpoint, (0, 0, 0))
                target[endpoint] = (r + load[0], t + load[1], p + load[2])
        self.counters.peers = peers
        self._last_read = self._monotonic()
        self._sharing = True
        for source, producer in self.producers.items():
            producer.set_remote_load(sums[source])

    def expire_if_stale(self) -> None:
        """Forget the others' load once it is older than its own TTL (store unreachable)."""
        if self._sharing and self._monotonic() - self._last_read > self.ttl:
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
