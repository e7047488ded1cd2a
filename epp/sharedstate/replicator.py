"""``SharedState``: the background work that shares routing state between picker replicas.

Built by ``build_shared_state`` from ``--state-store`` when the server starts. It finds
the participating plugins itself: every prefix producer's ``PrefixIndex`` (an ``index``
attribute) and every plugin that ``SharesInFlightLoad``. The request path never waits on
the store: it only touches local memory (an index observer that queues, counters that are
read locally, a set that notes which endpoints' load changed); loops in ``run`` publish and
follow prefix records, push load changes, follow the others' pushes and run the load rounds.
A lost store degrades routing to this replica's own state and shows in ``healthy()`` and
``snapshot()``; it never fails or delays a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from epp.plugins.prefix.index import PrefixIndex
from epp.sharedstate.address import parse_store_url
from epp.sharedstate.load_sync import LoadReplication, SharesInFlightLoad
from epp.sharedstate.prefix_sync import PrefixReplication
from epp.sharedstate.ratio_sync import RatioReplication, SharesTokenRatios
from epp.sharedstate.store import STORE_ERRORS, StateStore

__all__ = ["SharedState", "SharedStateSettings", "build_shared_state", "default_replica_id"]

log = logging.getLogger(__name__)


def default_replica_id() -> str:
    """``hostname-pid``: unique per process, readable in /debug."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedStateSettings:
    key_prefix: str = "epp"
    flush_interval: float = 0.025  # prefix records wait at most this long before publishing
    max_batch: int = 256  # records per stream entry
    # Records queued while the store is slow; the oldest are dropped. A record holds its hash
    # list (66 blocks for a 4 KB prompt, 256 at most: 2-10 KB of Python ints), so 2048 is 4-20 MB.
    outbox_limit: int = 2048
    # Stream entries kept (approximately): a new replica's warm-up history. An entry is one
    # flush (1 to max_batch records of ~0.5-2 KB), so at most ~256 × 256 × 2 KB = 128 MB in
    # Redis at saturating rates with the longest prompts, typically far less.
    stream_maxlen: int = 256
    load_period: float = 0.2
    # Push each in-flight change at once (pub/sub) besides the rounds: a 2.5k-token prefill
    # (~150 ms) is over before a 200 ms round shows it to the other replicas.
    load_push: bool = True
    load_ttl: float = 3.0  # a dead replica's load disappears after this long
    ratio_period: float = 1.0  # how often learned characters per token are shared and read
    timeout: float = 1.0  # per command
    block: float = 0.5  # longest blocking stream read
    backoff_max: float = 5.0  # longest pause between retries while the store is unreachable

    def __post_init__(self) -> None:
        for name in ("flush_interval", "load_period", "load_ttl", "ratio_period", "timeout", "block", "backoff_max"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.load_ttl <= self.load_period:
            raise ValueError("load_ttl must exceed load_period, or live replicas would expire")


class SharedState:
    """BackgroundWork: ``run`` under the server's supervisor, ``close`` at shutdown."""

    def __init__(self, store: StateStore, pool_name: str, replica_id: str, indexes: dict[str, PrefixIndex],
                 producers: dict[str, SharesInFlightLoad], settings: SharedStateSettings | None = None,
                 is_member: Callable[[str], bool] | None = None, clock: Callable[[], float] = time.time,
                 ratio_sharers: Mapping[str, SharesTokenRatios] | None = None) -> None:
        self.settings = s = settings or SharedStateSettings()
        self.store = store
        self.pool_name = pool_name
        self.replica_id = replica_id
        self.namespace = f"{s.key_prefix}:{pool_name}"
        self.prefix = PrefixReplication(store, f"{self.namespace}:prefix", replica_id, indexes,
                                        flush_interval=s.flush_interval, max_batch=s.max_batch,
                                        outbox_limit=s.outbox_limit, stream_maxlen=s.stream_maxlen,
                                        is_member=is_member, clock=clock)
        self.load = LoadReplication(store, self.namespace, replica_id, producers, period=s.load_period,
                                    ttl=s.load_ttl, push=s.load_push, clock=clock)
        self.ratios = RatioReplication(store, self.namespace, ratio_sharers or {}, period=s.ratio_period)
        # From construction on, so records made before ``run`` starts are published too.
        self.prefix.attach()
        self.load.attach()
        # Replicas leaving gracefully remove their load at once; a crash leaves it to the TTL.
        self.remove_on_stop = True
        self._clock = clock
        self._started = clock()
        self._rate_mark = (self._started, 0)

    async def run(self) -> None:
        s = self.settings
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.prefix.publish_forever())
                group.create_task(self.prefix.follow_forever())
                group.create_task(self.load.sync_forever())
                group.create_task(self.ratios.sync_forever())
                if s.load_push:
                    group.create_task(self.load.push_forever())
                    group.create_task(self.load.follow_forever())
        finally:
            if self.remove_on_stop:
                with contextlib.suppress(*STORE_ERRORS):
                    await asyncio.wait_for(self.load.remove_own(), self.settings.timeout)

    def close(self) -> None:
        self.prefix.detach()
        self.load.detach()

    async def aclose(self) -> None:
        """Close the store's connections (after ``run`` ended)."""
        self.close()
        await self.store.aclose()

    def healthy(self) -> tuple[bool, str]:
        """Whether replication works, and why not: for readiness and /debug/state."""
        health = self.store.health
        if health.connected:
            return True, f"connected to {self.store.address}"
        since = time.strftime("%H:%M:%S", time.gmtime(health.since))
        return False, f"state store {self.store.address} unreachable since {since}Z: {health.last_error}"

    def snapshot(self) -> dict[str, Any]:
        """``/debug/state``'s view of replication."""
        now = self._clock()
        ok, reason = self.healthy()
        prefix, load = self.prefix.counters, self.load.counters
        sent = prefix.bytes_sent + load.bytes_sent
        mark_time, mark_bytes = self._rate_mark
        rate = (sent - mark_bytes) / (now - mark_time) if now > mark_time else 0.0
        self._rate_mark = (now, sent)
        return {
            "store": str(self.store.address), "replicaId": self.replica_id, "pool": self.pool_name,
            "connected": ok, "reason": reason,
            "degradedForSeconds": None if ok else round(now - self.store.health.since, 3),
            "prefix": {"recordsSent": prefix.records_sent, "batchesSent": prefix.batches_sent,
                       "recordsDropped": self.prefix.outbox.dropped, "queued": len(self.prefix.outbox),
                       "recordsApplied": prefix.records_applied, "entriesRead": prefix.entries_read,
                       "badEntries": prefix.bad_entries, "blockSizeMismatches": prefix.block_size_mismatches,
                       "unknownSources": prefix.unknown_sources, "unknownEndpoints": prefix.unknown_endpoints,
                       "lagSeconds": prefix.lag_seconds},
            "load": {"rounds": load.rounds, "pushes": load.pushes, "pushesApplied": load.pushes_applied,
                     "commands": load.commands, "badFields": load.bad_fields},
            "charsPerToken": {"rounds": self.ratios.counters.rounds, "published": self.ratios.counters.published,
                              "badValues": self.ratios.counters.bad_values},
            "bytesSent": sent, "bytesPerSecond": round(rate, 1),
            "peers": {peer: {"lastHeartbeatAgeSeconds": round(now - beat, 3)}
                      for peer, beat in sorted(load.peers.items())},
        }


def build_shared_state(url: str, pool_name: str, replica_id: str, plugins: Iterable[object],
                       settings: SharedStateSettings | None = None,
                       is_member: Callable[[str], bool] | None = None) -> SharedState:
    """Shared state for the plugins that take part; raises ``ConfigError`` naming ``--state-store``.

    ``is_member(endpoint name)``: whether the local pool has that endpoint (remote prefix
    records for others are skipped); ``None`` applies every record.
    """
    if settings is None:
        settings = SharedStateSettings()
    address = parse_store_url(url)
    indexes: dict[str, PrefixIndex] = {}
    producers: dict[str, SharesInFlightLoad] = {}
    ratio_sharers: dict[str, SharesTokenRatios] = {}
    for plugin in plugins:
        name = _plugin_name(plugin)
        if isinstance(plugin, SharesTokenRatios):
            ratio_sharers[name] = plugin
        index = getattr(plugin, "index", None)
        if isinstance(index, PrefixIndex):
            indexes[name] = index
        if isinstance(plugin, SharesInFlightLoad):
            producers[name] = plugin
    if not indexes and not producers:
        log.warning("--state-store: no plugin shares state (no prefix producer, no inflight-load-producer)")
    store = StateStore(address, timeout=settings.timeout, block=settings.block, backoff_max=settings.backoff_max)
    return SharedState(store, pool_name, replica_id, indexes, producers, settings, is_member,
                       ratio_sharers=ratio_sharers)


def _plugin_name(plugin: object) -> str:
    typed = getattr(plugin, "typed_name", None)
    name = getattr(typed, "name", None)
    return name if isinstance(name, str) else type(plugin).__name__
