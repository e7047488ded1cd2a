"""ZeroMQ publisher of KV-event batches, behaving like vLLM's ``ZmqEventPublisher``.

* PUB socket: every batch goes out as three frames ``[topic, seq, payload]``, ``seq`` an 8-byte
  big-endian counter starting at 0, ``payload`` the msgpack ``KVEventBatch``.
* Replay (optional ROUTER socket): a client (REQ or DEALER) sends one frame, the first
  sequence number it missed (8 bytes, big-endian); it gets ``[seq, payload]`` for every
  buffered batch from there on, then ``[-1 (8 bytes, signed), b""]``. The buffer holds the
  last ``buffer_steps`` batches.

Threading: sockets live in one background thread, as in vLLM, so that encoding and sending
never run on the event loop that times the simulated steps. ``publish`` only puts the
batch's events on a queue (tens of nanoseconds per call); the thread stamps the sequence
number, encodes, sends and services replay requests between batches. A full queue drops the
batch and counts it (vLLM would block the engine); the sequence gap it leaves is what
subscribers detect.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Sequence

import zmq

from epp.sim.kv_events import KVEvent, encode_batch
from epp.sim.kv_events_config import KVEventsSettings

__all__ = ["END_SEQ", "KVEventPublisher"]

_LOG = logging.getLogger(__name__)

END_SEQ = (-1).to_bytes(8, "big", signed=True)

# How long the thread blocks on an empty queue before it looks at the replay socket again.
_POLL_SECONDS = 0.02

# Bound on the wait for the thread to flush and stop.
_JOIN_SECONDS = 2.0

_Item = tuple[float, Sequence[KVEvent]] | None


class KVEventPublisher:
    """One replica's PUB (+ ROUTER) sockets and their thread.

    Concurrency: ``publish`` may be called from any thread (the event loop in practice);
    everything else touches the sockets from the publisher thread only.
    """

    def __init__(self, settings: KVEventsSettings, *, data_parallel_rank: int = 0) -> None:
        self.settings = settings
        self.dropped = 0
        self._rank = data_parallel_rank
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=settings.max_queue_size)
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=settings.buffer_steps)
        self._topic = settings.topic.encode()
        self._next_seq = 0
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._pub = self._ctx.socket(zmq.PUB)
        self._replay: zmq.Socket[bytes] | None = None
        try:
            self._pub.set_hwm(settings.hwm)
            self._pub.setsockopt(zmq.LINGER, 0)
            if settings.bind:
                self._pub.bind(settings.endpoint)
            else:
                self._pub.connect(settings.endpoint)
            if settings.replay_endpoint:
                self._replay = self._ctx.socket(zmq.ROUTER)
                self._replay.setsockopt(zmq.LINGER, 0)
                self._replay.bind(settings.replay_endpoint)
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise OSError(f"kv events: cannot open {settings.endpoint}: {exc}") from exc
        self.endpoint = self._last_endpoint(self._pub) if settings.bind else settings.endpoint
        self.replay_endpoint = self._last_endpoint(self._replay) if self._replay is not None else None
        self._thread = threading.Thread(target=self._run, name="epp-sim-kv-events", daemon=True)
        self._thread.start()

    @property
    def published(self) -> int:
        """Batches sent so far (the next sequence number)."""
        return self._next_seq

    def publish(self, ts: float, events: Sequence[KVEvent]) -> None:
        """Queue one batch (one engine step's events); never blocks."""
        try:
            self._queue.put_nowait((ts, events))
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        """Send what is queued, stop the thread, close the sockets. Idempotent."""
        if self._thread.is_alive():
            try:
                self._queue.put(None, timeout=_JOIN_SECONDS)
            except queue.Full:
                _LOG.warning("kv events: queue still full at shutdown")
            self._thread.join(_JOIN_SECONDS)
        self._close_sockets()

    # --- publisher thread ----------------------------------------------------------------------
    def _run(self) -> None:
        replay = self._replay
        while True:
            if replay is not None:
                while replay.poll(0):
                    self._serve_replay(replay)
            try:
                item = self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            if item is None:
                return
            try:
                self._send(*item)
            except zmq.ZMQError:
                _LOG.exception("kv events: publishing failed")

    def _send(self, ts: float, events: Sequence[KVEvent]) -> None:
        seq = self._next_seq
        payload = encode_batch(ts, events, self._rank)
        self._pub.send_multipart((self._topic, seq.to_bytes(8, "big"), payload))
        self._buffer.append((seq, payload))
        self._next_seq = seq + 1

    def _serve_replay(self, replay: zmq.Socket[bytes]) -> None:
        frames = replay.recv_multipart()
        if len(frames) != 3:  # [identity, empty delimiter, start seq] from a REQ client
            _LOG.warning("kv events: malformed replay request of %d frames", len(frames))
            return
        client, _, start = frames
        first = int.from_bytes(start, "big")
        for seq, payload in list(self._buffer):
            if seq >= first:
                replay.send_multipart((client, b"", seq.to_bytes(8, "big"), payload))
        replay.send_multipart((client, b"", END_SEQ, b""))

    # --- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _last_endpoint(sock: zmq.Socket[bytes]) -> str:
        value = sock.getsockopt(zmq.LAST_ENDPOINT)
        return value.decode() if isinstance(value, bytes) else str(value)

    def _close_sockets(self) -> None:
        self._pub.close(linger=0)
        if self._replay is not None:
            self._replay.close(linger=0)
