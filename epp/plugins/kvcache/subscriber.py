"""Subscribe to the model servers' KV-cache event publishers and feed a ``KVBlockIndex``.

Two topologies, as llm-d supports:

- ``connect``: one SUB socket per pool endpoint, connected to its publisher (vLLM's
  ``--kv-events-config '{"endpoint": "tcp://*:5557", ...}'`` binds there). The address is
  ``endpoint_template`` formatted with the endpoint's ``address`` (bracketed if IPv6),
  ``port`` and ``name``, or the endpoint's ``kv-events-endpoint`` label when set. The
  subscriber follows the pool: a socket per endpoint that joins, closed (and the index
  purged) when it leaves.
- ``bind``: one SUB socket bound at ``bind_address``; publishers connect to it (vLLM's
  endpoint ``tcp://<picker>:5557``). The endpoint is found from the message topic: llm-d's
  convention ``kv@<pod-id>@<model>`` (llm-d-kv-cache ``parseTopic``: three ``@``-separated
  parts, else the whole topic is the id), where the id is matched against each pool
  endpoint's name, address or ``address:port`` (an address shared by several members names
  none of them); ``topic_map`` maps whole topics to endpoint names explicitly first. A
  message whose endpoint is not in the pool is counted and dropped.

Sequence numbers (per endpoint and data-parallel rank) find lost messages:

- a gap (``seq > last + 1``): when a replay address is known (``replay_template``, or the
  ``kv-events-replay-endpoint`` label) the missing batches are requested from vLLM's replay
  ROUTER (in bind mode this holds the shared socket's other publishers meanwhile, at most
  ``replay_timeout``) (start sequence as 8 bytes big-endian; frames ``[seq, payload]`` until ``seq = -1``)
  and applied in order, within ``replay_timeout``. Without replay, or when replay does not
  deliver every missing batch, the endpoint's index is cleared and the gap counted. A stale
  index is worse than an empty one: a missed ``BlockRemoved`` leaves blocks the replica no
  longer holds, so the scorer would keep sending a prefix to a replica that must recompute
  it while it believes that is the cheapest choice; an empty index only costs precision
  until new events arrive, and the approximate scorer (or none) decides meanwhile.
- a reset (``seq <= last``): the publisher restarted (vLLM numbers from 0 per process), so
  its cache restarted empty: the index is cleared and the reset counted.
- a reconnect (connect mode; a socket monitor reports the publisher's connection dropped):
  the first message afterwards must continue the sequence exactly, else it is treated as a
  reset, not a gap. A restarted publisher that has already numbered past our last sequence
  looks like a gap, and replaying from its buffer would apply the new process's events on
  top of the old process's blocks.
- a malformed message is counted as an error and dropped; it may have carried removals, so
  in connect mode that endpoint's index is cleared as for a gap.

The receive loop never holds the event loop for long: one message is bounded by
``DecodeLimits`` (ZeroMQ drops larger ones before they are read), and the loop yields after
every ``yield_every`` messages even when more are already queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from epp.datalayer.endpoint import Endpoint
from epp.datalayer.pool import EndpointPool
from epp.plugins.kvcache.events import (
    DEFAULT_LIMITS,
    DecodeLimits,
    EventBatch,
    MalformedMessage,
    decode_message,
    decode_payload,
    decode_sequence,
)
from epp.plugins.kvcache.index import KVBlockIndex

__all__ = ["ENDPOINT_LABEL", "REPLAY_LABEL", "KVEventsSubscriber", "endpoint_id_from_topic"]

log = logging.getLogger(__name__)

ENDPOINT_LABEL = "kv-events-endpoint"
REPLAY_LABEL = "kv-events-replay-endpoint"
_MAX_REPLAY_MESSAGES = 10_000  # vLLM's default replay buffer (buffer_steps)


def endpoint_id_from_topic(topic: str) -> str:
    """The endpoint id in an llm-d topic ``kv@<id>@<model>``; any other topic is the id itself."""
    parts = topic.split("@")
    return parts[1] if len(parts) == 3 else topic


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def _offset_port(url: str, rank: int) -> str:
    """vLLM offsets each data-parallel rank's publisher and replay port by the rank."""
    if rank == 0 or not url.startswith("tcp://"):
        return url
    base, _, port = url.rpartition(":")
    return f"{base}:{int(port) + rank}" if port.isdigit() else url


@dataclass(slots=True)
class _Connection:
    endpoint: Endpoint | None  # None: the bound socket, shared by every publisher
    socket: zmq.asyncio.Socket
    task: asyncio.Task[None] | None = None
    monitor: zmq.asyncio.Socket | None = None
    monitor_task: asyncio.Task[None] | None = None

    def start(self, subscriber: KVEventsSubscriber) -> None:
        self.task = asyncio.create_task(subscriber._receive(self.socket, self.endpoint))
        if self.monitor is not None and self.endpoint is not None:
            self.monitor_task = asyncio.create_task(subscriber._watch(self.monitor, self.endpoint))

    def tasks(self) -> list[asyncio.Task[None]]:
        return [t for t in (self.task, self.monitor_task) if t is not None]

    def stop(self) -> None:
        for task in self.tasks():
            task.cancel()
        if self.monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                self.socket.disable_monitor()
            self.monitor.close(linger=0)
        self.socket.close(linger=0)


class KVEventsSubscriber:
    """Receives KV-cache events from every endpoint's publisher and applies them to ``index``."""

    def __init__(self, index: KVBlockIndex, *, mode: Literal["connect", "bind"] = "connect",
                 endpoint_template: str = "tcp://{address}:5557", bind_address: str | None = None,
                 topic: str = "", replay_template: str | None = None, topic_map: Mapping[str, str] | None = None,
                 limits: DecodeLimits = DEFAULT_LIMITS, replay_timeout: float = 1.0, yield_every: int = 64) -> None:
        if mode not in ("connect", "bind"):
            raise ValueError(f"mode must be 'connect' or 'bind', got {mode!r}")
        if mode == "bind" and not bind_address:
            raise ValueError("bind mode needs a bind_address, e.g. 'tcp://*:5557'")
        if yield_every < 1 or replay_timeout <= 0:
            raise ValueError("yield_every must be >= 1 and replay_timeout > 0")
        for template in (endpoint_template, replay_template or ""):
            try:
                template.format(address="10.0.0.1", port=8000, name="pod")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"{template!r}: only {{address}}, {{port}} and {{name}} may be used ({e})") from e
        self._index = index
        self._mode = mode
        self._endpoint_template = endpoint_template
        self._replay_template = replay_template
        self._topic = topic.encode()
        self._topic_map = dict(topic_map or {})
        self._limits = limits
        self._replay_timeout = replay_timeout
        self._yield_every = yield_every
        self._zmq: zmq.asyncio.Context | None = None  # created with the first socket
        self._connections: dict[str, _Connection] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._aliases: dict[str, str] = {}  # name, address, address:port -> endpoint name (bind mode)
        self._last: dict[tuple[str, int], int] = {}
        self._reconnected: set[str] = set()  # endpoints whose publisher connection dropped since
        self._running = False
        self._closed = False
        self.messages = self.errors = self.unknown_topics = 0
        self._bound: _Connection | None = None
        self.bound_address: str | None = None
        if mode == "bind":
            assert bind_address is not None
            sock = self._sub_socket()
            sock.bind(bind_address)
            self.bound_address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self._bound = _Connection(None, sock)

    # --- pool membership -------------------------------------------------------------

    def attach(self, pool: EndpointPool) -> None:
        """Follow ``pool``: its current members now, later ones as they join and leave."""
        pool.add_listener(self)
        for endpoint in pool.endpoints():
            self.endpoint_added(endpoint)

    def endpoint_added(self, endpoint: Endpoint) -> None:
        if self._closed:
            return
        meta = endpoint.metadata
        previous = self._connections.pop(meta.name, None)
        if previous is not None:
            previous.stop()
        self._endpoints[meta.name] = endpoint
        self._update_aliases()
        if self._mode == "connect":
            sock = self._sub_socket()
            monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            address = self.publisher_address(endpoint)
            try:
                sock.connect(address)
            except zmq.ZMQError as e:  # a bad label must not stop the pool from telling others
                log.warning("KV events: cannot connect to %r for %s: %s", address, meta.name, e)
                self.errors += 1
                _Connection(endpoint, sock, monitor=monitor).stop()
                return
            connection = self._connections[meta.name] = _Connection(endpoint, sock, monitor=monitor)
            if self._running:
                connection.start(self)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        name = endpoint.name
        if self._endpoints.get(name) is endpoint:
            del self._endpoints[name]
            self._update_aliases()
        connection = self._connections.get(name)
        if connection is not None and connection.endpoint is endpoint:
            del self._connections[name]
            connection.stop()
        self._forget_sequences(name)
        self._index.purge(name)

    def _update_aliases(self) -> None:
        """Topic ids that name exactly one member: its name, address or ``address:port``."""
        owners: dict[str, set[str]] = {}
        for name, endpoint in self._endpoints.items():
            for alias in (name, endpoint.metadata.address, endpoint.metadata.hostport):
                owners.setdefault(alias, set()).add(name)
        self._aliases = {alias: next(iter(names)) for alias, names in owners.items() if len(names) == 1}

    def publisher_address(self, endpoint: Endpoint) -> str:
        return endpoint.metadata.labels.get(ENDPOINT_LABEL) or self._format(self._endpoint_template, endpoint)

    def replay_address(self, endpoint: Endpoint, rank: int = 0) -> str | None:
        url = endpoint.metadata.labels.get(REPLAY_LABEL)
        if url is None and self._replay_template is not None:
            url = self._format(self._replay_template, endpoint)
        return None if url is None else _offset_port(url, rank)

    @staticmethod
    def _format(template: str, endpoint: Endpoint) -> str:
        meta = endpoint.metadata
        return template.format(address=_url_host(meta.address), port=meta.port, name=meta.name)

    def _sub_socket(self) -> zmq.asyncio.Socket:
        sock = self._context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        # ZeroMQ refuses an oversized message before allocating it (and drops that peer,
        # which reconnects: the lost message then shows as a gap).
        sock.setsockopt(zmq.MAXMSGSIZE, self._limits.max_payload_bytes + self._limits.max_topic_bytes + 64)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
        sock.setsockopt(zmq.SUBSCRIBE, self._topic)
        return sock

    # --- running -----------------------------------------------------------------------

    async def run(self) -> None:
        """Receive until cancelled (or ``close()``)."""
        if self._running or self._closed:
            raise RuntimeError("subscriber already running or closed")
        self._running = True
        for connection in self._all_connections():
            connection.start(self)
        try:
            await asyncio.Event().wait()
        finally:
            self._running = False
            tasks = [t for c in self._all_connections() for t in c.tasks()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        self._closed = True
        for connection in self._all_connections():
            connection.stop()
        self._connections.clear()
        self._bound = None
        if self._zmq is not None:
            self._zmq.destroy(linger=0)

    @property
    def _context(self) -> zmq.asyncio.Context:
        if self._zmq is None:
            self._zmq = zmq.asyncio.Context()
        return self._zmq

    def _all_connections(self) -> list[_Connection]:
        return [*self._connections.values(), *([self._bound] if self._bound is not None else [])]

    async def _receive(self, sock: zmq.asyncio.Socket, endpoint: Endpoint | None) -> None:
        handled = 0
        while True:
            try:
                frames = await sock.recv_multipart()
            except zmq.ZMQError:
                return  # the socket was closed: the endpoint left or the subscriber closed
            self.messages += 1
            try:
                await self._handle(frames, endpoint)
            except Exception:  # a bug must not stop the events of every later message
                self.errors += 1
                log.exception("KV events: failed to handle a message")
            handled += 1
            if handled % self._yield_every == 0:
                await asyncio.sleep(0)

    async def _watch(self, monitor: zmq.asyncio.Socket, endpoint: Endpoint) -> None:
        while True:
            try:
                frames = await monitor.recv_multipart()
            except zmq.ZMQError:
                return
            with contextlib.suppress(Exception):  # a monitor frame we cannot parse is no reason to stop
                if parse_monitor_message(frames)["event"] == zmq.EVENT_DISCONNECTED:
                    self._reconnected.add(endpoint.name)

    async def _handle(self, frames: list[bytes], endpoint: Endpoint | None) -> None:
        try:
            batch = decode_message(frames, self._limits)
        except MalformedMessage as e:
            self.errors += 1
            log.debug("KV events: dropped a malformed message: %s", e)
            if endpoint is not None:
                self._forget_sequences(endpoint.name)
                self._index.clear(endpoint.name, error=True)
            return
        if endpoint is None:
            endpoint = self._resolve(batch.topic)
            if endpoint is None:
                self.unknown_topics += 1
                return
        await self._apply_in_order(endpoint, batch)

    def _resolve(self, topic: str) -> Endpoint | None:
        name = self._topic_map.get(topic) or self._aliases.get(endpoint_id_from_topic(topic))
        return None if name is None else self._endpoints.get(name)

    async def _apply_in_order(self, endpoint: Endpoint, batch: EventBatch) -> None:
        name = endpoint.name
        rank = batch.data_parallel_rank or 0
        last = self._last.get((name, rank))
        continues = last is not None and batch.seq == last + 1
        if last is not None and (batch.seq <= last or (name in self._reconnected and not continues)):
            self._forget_sequences(name)
            self._index.clear(name, reset=True)
        elif last is not None and batch.seq > last + 1:
            if await self._replay(endpoint, rank, last + 1, batch.seq):
                self._index.record_gap(name)
            else:
                self._forget_sequences(name)
                self._index.clear(name, gap=True)
        if self._endpoints.get(name) is not endpoint:
            return  # it left while the replay was awaited
        self._reconnected.discard(name)
        self._index.apply_batch(name, batch)
        self._last[(name, rank)] = batch.seq

    def _forget_sequences(self, name: str) -> None:
        self._reconnected.discard(name)
        for key in [k for k in self._last if k[0] == name]:
            del self._last[key]

    async def _replay(self, endpoint: Endpoint, rank: int, start: int, stop: int) -> bool:
        """Fetch and apply batches ``start`` .. ``stop - 1``; False unless every one arrived in order."""
        address = self.replay_address(endpoint, rank)
        if address is None or stop - start > _MAX_REPLAY_MESSAGES:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._replay_timeout
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self._limits.max_payload_bytes + 64)
        try:
            sock.connect(address)
            await sock.send_multipart([b"", start.to_bytes(8, "big", signed=True)])
            expected = start
            for _ in range(stop - start + 1):
                remaining = deadline - loop.time()
                if remaining <= 0 or not await sock.poll(remaining * 1000):
                    return False
                frames = await sock.recv_multipart()
                if len(frames) != 3 or frames[0]:
                    return False
                seq = decode_sequence(frames[1])
                if seq != expected:
                    return False  # the end marker (-1) came early, or the buffer no longer reaches back
                batch = decode_payload(frames[2], seq, "", self._limits)
                if self._endpoints.get(endpoint.name) is not endpoint:
                    return False
                self._index.apply_batch(endpoint.name, batch)
                expected += 1
                if expected == stop:
                    return True
                if (expected - start) % self._yield_every == 0:
                    await asyncio.sleep(0)
            return False
        except (MalformedMessage, zmq.ZMQError) as e:
            log.debug("KV events: replay from %s failed: %s", address, e)
            return False
        finally:
            with contextlib.suppress(zmq.ZMQError):
                sock.close(linger=0)

    def stats(self) -> dict[str, Any]:
        return {"mode": self._mode, "connections": len(self._connections), "messages": self.messages,
                "errors": self.errors, "unknownTopics": self.unknown_topics}
