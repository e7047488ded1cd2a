"""Per-request state carried across one ext_proc stream (or two, with the fast Envoy config)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from epp.datalayer.endpoint import Endpoint
from epp.framework.requestcontrol import ResponseInfo
from epp.metricfamilies import Value
from epp.requests.model_rewrite import ModelNameRestorer
from epp.requests.types import InferenceRequest
from epp.requests.usage import UsageScanner

__all__ = ["ObservedRequests", "RequestContext"]


class RequestContext:
    __slots__ = ("request_id", "received_at", "request", "endpoint", "response", "usage", "finished", "restorer",
                 "running", "labels")

    def __init__(self, request_id: str, received_at: float | None = None) -> None:
        self.request_id = request_id
        self.received_at = time.monotonic() if received_at is None else received_at
        self.request: InferenceRequest | None = None
        self.endpoint: Endpoint | None = None
        self.response = ResponseInfo()
        self.usage: UsageScanner | None = None
        self.finished = False
        # Gives the client back its model name in the response when it was rewritten.
        self.restorer: ModelNameRestorer | None = None
        # The running-requests gauge this request incremented: the decrement goes to the
        # same child, even if the metric families changed their label sets meanwhile.
        self.running: Value | None = None
        self.labels: tuple[str, str] | None = None  # the (model, target) metric labels it counts under

    def scheduled(self, endpoint: Endpoint) -> None:
        """The request is routed: from now on ``Director.finish`` releases its bookkeeping."""
        self.endpoint = endpoint
        self.response.endpoint = endpoint

    def response_started(self, headers: dict[str, str]) -> None:
        response = self.response
        response.headers = headers
        try:
            response.status = int(headers.get(":status", "0"))
        except ValueError:
            response.status = 0
        response.streaming = "text/event-stream" in headers.get("content-type", "")
        if self.request is not None:  # nothing to attribute usage to for a headers-only request
            self.usage = UsageScanner(response.streaming)

    def chunk_seen(self, chunk: bytes) -> None:
        response = self.response
        if response.first_chunk_at is None:
            response.first_chunk_at = time.monotonic()
        response.body_bytes += len(chunk)
        if self.request is None:
            return
        if self.usage is None:  # response headers were not sent to us (header mode SKIP)
            self.usage = UsageScanner(streaming=chunk.startswith(b"data:"))
        self.usage.feed(chunk)


_Finish = Callable[[RequestContext], None]


class ObservedRequests:
    """Routed requests whose response arrives on a second, observe-only ext_proc stream.

    With the fast Envoy config (config/envoy-fast.yaml) the routing stream ends as soon
    as the request is routed, and Envoy reports the response on another stream that it
    never waits on (ext_proc ``observability_mode``). The two meet here, by request id.
    ``add`` parks a routed request until its observation stream ``claim``s it; a request
    whose observation never comes (that stream landed on another picker replica, or Envoy
    never opened it) is released with ``finish`` after ``ttl`` seconds; past ``max_size``
    parked requests the oldest is released at once, so the registry stays bounded. Ids
    are not unique (a client may send its own ``x-request-id``): requests sharing one are
    claimed oldest first. ``passed`` marks a request whose response the routing stream
    keeps (its body is rewritten), so its observation stream is turned away at once.
    """

    __slots__ = ("finish", "ttl", "max_size", "clock", "_order", "_by_id", "_waiters", "_seq", "_timer")

    def __init__(self, finish: _Finish, ttl: float = 30.0, max_size: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.finish = finish
        self.ttl = ttl
        self.max_size = max_size
        self.clock = clock
        # Insertion order is deadline order (one TTL for all): expiry pops from the front.
        self._order: OrderedDict[int, tuple[float, RequestContext | None, str]] = OrderedDict()
        self._by_id: dict[str, deque[int]] = {}
        self._waiters: dict[str, deque[asyncio.Future[RequestContext | None]]] = {}
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._order)

    def add(self, ctx: RequestContext) -> None:
        """Park a routed request until its observation stream claims it."""
        self._park(ctx.request_id, ctx)

    def passed(self, request_id: str) -> None:
        """The routing stream keeps this request's response: its observation is not needed."""
        self._park(request_id, None)

    def _park(self, request_id: str, ctx: RequestContext | None) -> None:
        waiters = self._waiters.get(request_id)
        if waiters:  # the observation came first (it never does from one Envoy; from a retry it might)
            waiter = waiters.popleft()
            if not waiters:
                del self._waiters[request_id]
            waiter.set_result(ctx)
            return
        now = self.clock()
        self.expire(now)
        while len(self._order) >= self.max_size:
            self._release(*self._order.popitem(last=False))
        self._seq += 1
        self._order[self._seq] = (now + self.ttl, ctx, request_id)
        self._by_id.setdefault(request_id, deque()).append(self._seq)
        self._arm_timer()

    def claim(self, request_id: str) -> tuple[bool, RequestContext | None]:
        """(found, context): the oldest request parked under ``request_id``; context None if passed."""
        seqs = self._by_id.get(request_id)
        if not seqs:
            return False, None
        seq = seqs.popleft()
        if not seqs:
            del self._by_id[request_id]
        _, ctx, _ = self._order.pop(seq)
        return True, ctx

    async def claim_waiting(self, request_id: str, wait: float) -> RequestContext | None:
        """``claim``, waiting up to ``wait`` seconds for the request to be parked."""
        found, ctx = self.claim(request_id)
        if found or wait <= 0:
            return ctx
        future: asyncio.Future[RequestContext | None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(request_id, deque())
        waiters.append(future)
        try:
            return await asyncio.wait_for(asyncio.shield(future), wait)
        except TimeoutError:
            # Parked in the same loop turn as the timeout: it is ours, not lost.
            return future.result() if future.done() and not future.cancelled() else None
        finally:
            if not future.done():
                future.cancel()
            if future in waiters:
                waiters.remove(future)
                if not waiters:
                    self._waiters.pop(request_id, None)

    def expire(self, now: float | None = None) -> int:
        """Release every parked request past its deadline; returns how many."""
        now = self.clock() if now is None else now
        expired = 0
        while self._order:
            seq, (deadline, ctx, request_id) = next(iter(self._order.items()))
            if deadline > now:
                break
            del self._order[seq]
            self._release(seq, (deadline, ctx, request_id))
            expired += 1
        return expired

    def _release(self, seq: int, entry: tuple[float, RequestContext | None, str]) -> None:
        _, ctx, request_id = entry
        seqs = self._by_id.get(request_id)
        if seqs is not None:
            seqs.remove(seq)
            if not seqs:
                del self._by_id[request_id]
        if ctx is not None:
            self.finish(ctx)

    def _arm_timer(self) -> None:
        # One timer at a time, for the oldest deadline, and only while something is parked.
        if self._timer is not None or not self._order:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (unit tests call ``expire`` themselves)
            return
        deadline = next(iter(self._order.values()))[0]
        self._timer = loop.call_later(max(0.0, deadline - self.clock()) + 0.001, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.expire()
        self._arm_timer()
