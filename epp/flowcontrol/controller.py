"""The flow controller: holds requests that cannot be served yet and releases them in order.

``enqueue_and_wait`` is director step 3 when the ``flowControl`` gate is on. A request
either passes at once (nothing waits at its priority or above and the pool is below its
band's ceiling: the fast path, a few microseconds), is rejected (capacity: 429), or waits
in its band → flow → ordered queue until a dispatch pass releases it, its TTL runs out
(503), the picker shuts down (503), or its caller is cancelled (Envoy reset the stream).

Every exit leaves the counters exact: a request is counted while it sits in a flow queue
and in nothing else, and each request that came through ``enqueue_and_wait`` is reported
exactly once to ``FlowObserver.left``.

TTL: the request's own ``ttl`` wins; when it is ``math.inf`` the controller writes
``settings.default_ttl`` into it on enqueue, so ``expires_at`` (which EDF ordering reads)
is the effective deadline. ``math.inf`` everywhere means "until the client gives up".
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from epp.errors import ResourceExhausted, ServiceUnavailable
from epp.flowcontrol.types import (
    FairnessPolicy,
    FlowControlRequest,
    FlowKey,
    FlowQueue,
    OrderingPolicy,
    QueueOutcome,
    SaturationDetector,
    UsageLimitPolicy,
)

if TYPE_CHECKING:
    from epp.datalayer.endpoint import Endpoint

__all__ = [
    "DEFAULT_BAND_MAX_BYTES",
    "BandSettings",
    "FlowControlSettings",
    "FlowController",
    "FlowObserver",
    "WorkloadRecorder",
]

log = logging.getLogger(__name__)

DEFAULT_BAND_MAX_BYTES = 1_000_000_000  # Go: registry/config.go applyDefaults
SWEEP_INTERVAL = 0.1  # the TTL sweep runs at least this often while anything waits
MAINTENANCE_INTERVAL = 1.0  # workload expiry, idle band GC, idle saturation reading
MAX_FLOWS_SHOWN = 100  # per band in snapshot()


@dataclass(frozen=True, slots=True, kw_only=True)
class BandSettings:
    """One priority band. Limits of 0 mean unlimited (the config layer applies Go's 1 GB default)."""

    priority: int
    fairness: FairnessPolicy
    ordering: OrderingPolicy
    max_bytes: int = DEFAULT_BAND_MAX_BYTES
    max_requests: int = 0

    def __post_init__(self) -> None:
        if self.max_bytes < 0 or self.max_requests < 0:
            raise ValueError(f"band {self.priority}: maxBytes and maxRequests must be >= 0")


@dataclass(frozen=True, slots=True)
class FlowControlSettings:
    """The whole queue. ``default_band`` is the template for a priority with no configured band."""

    bands: Mapping[int, BandSettings]
    default_band: BandSettings
    usage_limit: UsageLimitPolicy
    max_bytes: int = 0  # 0: unlimited
    max_requests: int = 0  # 0: unlimited
    default_ttl: float = math.inf
    poll_interval: float = 0.01
    band_idle_expiry: float = 600.0

    def __post_init__(self) -> None:
        for priority, band in self.bands.items():
            if band.priority != priority:
                raise ValueError(f"band keyed {priority} has priority {band.priority}")
        if self.max_bytes < 0 or self.max_requests < 0:
            raise ValueError("maxBytes and maxRequests must be >= 0")
        if not self.default_ttl > 0:
            raise ValueError(f"default_ttl must be > 0, got {self.default_ttl}")
        if not 0 < self.poll_interval <= 60:
            raise ValueError(f"poll_interval must be in (0, 60], got {self.poll_interval}")
        if not self.band_idle_expiry >= 0:
            raise ValueError(f"band_idle_expiry must be >= 0, got {self.band_idle_expiry}")


class FlowObserver(Protocol):
    """Where metrics come from (wired by the lead)."""

    def queued(self, request: FlowControlRequest, count_delta: int, bytes_delta: int) -> None:
        """Every change of what is queued: +1/+size on enqueue, -1/-size when it leaves."""

    def left(self, request: FlowControlRequest, outcome: QueueOutcome, waited: float) -> None:
        """Exactly once per request that went through ``enqueue_and_wait``."""

    def saturation(self, value: float) -> None:
        """The latest pool saturation reading."""


class WorkloadRecorder(Protocol):
    """The write side of ``epp.flowcontrol.workloads.WorkloadRegistry`` the controller drives."""

    def record_arrival(self, workload_id: str, now: float, /) -> None: ...

    def record_dispatch(self, workload_id: str, waited: float, now: float, /) -> None: ...

    def expire(self, now: float, /) -> Any: ...


class _Flow:
    """One non-empty flow of a band (a ``FlowView`` for fairness policies)."""

    __slots__ = ("bytes", "key", "queue")

    def __init__(self, key: FlowKey, queue: FlowQueue) -> None:
        self.key = key
        self.queue = queue
        self.bytes = 0


class _Band:
    __slots__ = ("bytes", "configured", "count", "empty_since", "flows", "priority", "settings", "state", "views")

    def __init__(self, settings: BandSettings, priority: int, configured: bool, now: float) -> None:
        self.settings = settings
        self.priority = priority
        self.configured = configured
        self.state = settings.fairness.new_band_state()
        # First-arrival order; a flow leaves when its queue empties, so every flow here is non-empty.
        self.flows: dict[FlowKey, _Flow] = {}
        self.views: tuple[_Flow, ...] | None = None  # cached fairness input; None after a flow set change
        self.count = 0
        self.bytes = 0
        self.empty_since = now

    def flow_views(self) -> tuple[_Flow, ...]:
        if self.views is None:
            self.views = tuple(self.flows.values())
        return self.views


@dataclass(slots=True)
class _Counters:
    count: int = 0
    bytes: int = 0
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


class FlowController:
    """Priority bands → fairness → ordering, gated by pool saturation (Go's ``FlowController``).

    All methods run on the event loop thread; nothing here blocks.
    """

    def __init__(
        self,
        settings: FlowControlSettings,
        detector: SaturationDetector,
        endpoints: Callable[[], Sequence[Endpoint]],
        workloads: WorkloadRecorder | None = None,
        observer: FlowObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._detector = detector
        self._endpoints = endpoints
        self._workloads = workloads
        self._observer = observer
        self._clock = clock
        self._usage_limit = settings.usage_limit
        self._totals = _Counters()
        now = clock()
        self._bands: dict[int, _Band] = {
            p: _Band(band, p, configured=True, now=now) for p, band in settings.bands.items()
        }
        self._order: list[_Band] = []  # highest priority first
        self._priorities: tuple[int, ...] = ()  # of self._order, for usage-limit policies
        self._reorder()
        self._waiters: dict[FlowControlRequest, asyncio.Future[None]] = {}
        self._deadlines: list[tuple[float, int, FlowControlRequest]] = []  # lazy: stale entries skipped
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pass: asyncio.Handle | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self._saturation: float | None = None
        self._saturation_at = 0.0

    # ----------------------------------------------------------------- read side

    @property
    def queued_requests(self) -> int:
        return self._totals.count

    @property
    def queued_bytes(self) -> int:
        return self._totals.bytes

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready picture for ``/debug/flowcontrol`` (limits of 0 and TTL ``None`` mean unlimited)."""
        now = self._clock()
        s = self._settings
        return {
            "saturation": self._saturation,
            "saturationAgeSeconds": None if self._saturation is None else max(0.0, now - self._saturation_at),
            "queuedRequests": self._totals.count,
            "queuedBytes": self._totals.bytes,
            "limits": {"maxBytes": s.max_bytes, "maxRequests": s.max_requests},
            "defaultTTLSeconds": None if math.isinf(s.default_ttl) else s.default_ttl,
            "bands": [self._band_snapshot(band, now) for band in self._order],
        }

    def _band_snapshot(self, band: _Band, now: float) -> dict[str, Any]:
        flows = []
        for flow in itertools.islice(band.flows.values(), MAX_FLOWS_SHOWN):
            oldest = min((r.enqueued_at for r in flow.queue), default=now)
            flows.append({
                "fairnessId": flow.key.fairness_id,
                "queuedRequests": len(flow.queue),
                "queuedBytes": flow.bytes,
                "oldestWaitSeconds": max(0.0, now - oldest),
            })
        return {
            "priority": band.priority,
            "dynamic": not band.configured,
            "fairnessPolicy": _type_name(band.settings.fairness),
            "orderingPolicy": _type_name(band.settings.ordering),
            "usageCeiling": self._usage_limit.ceiling(band.priority, self._saturation or 0.0, self._priorities),
            "maxBytes": band.settings.max_bytes,
            "maxRequests": band.settings.max_requests,
            "queuedRequests": band.count,
            "queuedBytes": band.bytes,
            "flows": flows,
            "flowsOmitted": max(0, len(band.flows) - MAX_FLOWS_SHOWN),
        }

    # ----------------------------------------------------------------- admission

    async def enqueue_and_wait(self, request: FlowControlRequest) -> None:
        """Return when ``request`` may go on to scheduling.

        Raises:
            ResourceExhausted: a queue limit would be exceeded (429).
            ServiceUnavailable: its TTL ran out in the queue, or the picker is shutting down (503).
            asyncio.CancelledError: the caller was cancelled; the request left the queue already.
        """
        now = self._clock()
        if self._workloads is not None:
            self._workloads.record_arrival(request.workload.workload_id, now)
        if self._closed:
            self._left(request, QueueOutcome.REJECTED_OTHER, 0.0)
            raise ServiceUnavailable("picker shutting down")
        priority = request.flow.priority
        band = self._bands.get(priority)
        try:
            self._check_capacity(band, request)
        except ResourceExhausted:
            self._left(request, QueueOutcome.REJECTED_CAPACITY, 0.0)
            raise
        if self._totals.count == 0 or not self._waiting_at_or_above(priority):
            saturation = self._read_saturation(now)
            priorities = self._priorities if band is not None else (*self._priorities, priority)
            if saturation < self._usage_limit.ceiling(priority, saturation, priorities):
                self._dispatched(request, 0.0, now)
                return
        future = self._enqueue(request, band, now)
        try:
            await future
        except asyncio.CancelledError:
            if request in self._waiters:
                left_at = self._clock()
                self._remove(request, left_at)
                self._left(request, QueueOutcome.EVICTED_CANCELLED, left_at - request.enqueued_at)
                self.notify()
            elif future.done() and not future.cancelled():
                future.exception()  # resolved just before the cancel landed; mark it retrieved
            raise

    def _check_capacity(self, band: _Band | None, request: FlowControlRequest) -> None:
        s = self._settings
        size = request.size_bytes
        totals = self._totals
        if s.max_requests and totals.count + 1 > s.max_requests:
            raise ResourceExhausted(
                f"flow control queue full: {totals.count} requests queued, global maxRequests is {s.max_requests}")
        if s.max_bytes and totals.bytes + size > s.max_bytes:
            raise ResourceExhausted(
                f"flow control queue full: {totals.bytes} + {size} bytes exceeds global maxBytes {s.max_bytes}")
        limits = band.settings if band is not None else s.default_band
        count = band.count if band is not None else 0
        queued = band.bytes if band is not None else 0
        priority = request.flow.priority
        if limits.max_requests and count + 1 > limits.max_requests:
            raise ResourceExhausted(
                f"flow control queue full: priority band {priority} has {count} requests queued, "
                f"its maxRequests is {limits.max_requests}")
        if limits.max_bytes and queued + size > limits.max_bytes:
            raise ResourceExhausted(
                f"flow control queue full: priority band {priority} has {queued} + {size} bytes, "
                f"its maxBytes is {limits.max_bytes}")

    def _waiting_at_or_above(self, priority: int) -> bool:
        for band in self._order:
            if band.priority < priority:
                return False
            if band.count:
                return True
        return False

    def _enqueue(self, request: FlowControlRequest, band: _Band | None, now: float) -> asyncio.Future[None]:
        loop = self._loop = asyncio.get_running_loop()
        if band is None:
            band = self._new_dynamic_band(request.flow.priority, now)
        request.enqueued_at = now
        request.seq = next(self._totals.seq)
        if math.isinf(request.ttl):
            request.ttl = self._settings.default_ttl
        flow = band.flows.get(request.flow)
        if flow is None:
            flow = band.flows[request.flow] = _Flow(request.flow, band.settings.ordering.new_queue())
            band.views = None
        flow.queue.push(request)
        size = request.size_bytes
        flow.bytes += size
        band.count += 1
        band.bytes += size
        self._totals.count += 1
        self._totals.bytes += size
        future: asyncio.Future[None] = loop.create_future()
        self._waiters[request] = future
        deadline = request.expires_at
        if not math.isinf(deadline):
            earliest = self._deadlines[0][0] if self._deadlines else math.inf
            heapq.heappush(self._deadlines, (deadline, request.seq, request))
            if deadline < earliest:
                self._wake.set()  # run() may be sleeping past this new deadline
        if self._totals.count == 1:
            self._wake.set()  # run() leaves its idle sleep and starts polling
        if self._observer is not None:
            self._observer.queued(request, 1, size)
        self.notify()
        return future

    def _new_dynamic_band(self, priority: int, now: float) -> _Band:
        band = _Band(self._settings.default_band, priority, configured=False, now=now)
        self._bands[priority] = band
        self._reorder()
        return band

    def _reorder(self) -> None:
        self._order = sorted(self._bands.values(), key=lambda b: b.priority, reverse=True)
        self._priorities = tuple(b.priority for b in self._order)

    # ----------------------------------------------------------------- dispatch

    def notify(self) -> None:
        """Ask for a dispatch pass: call it when a request finishes and after each metrics scrape.

        Coalesced (several calls before the pass runs make one pass); a no-op when nothing waits.
        """
        if self._pass is None and self._totals.count and self._loop is not None and not self._closed:
            self._pass = self._loop.call_soon(self._dispatch_pass)

    def _dispatch_pass(self) -> None:
        """Go's dispatch cycle, releasing at most one request.

        One request per pass, and the next pass queued with ``call_soon`` *after* the future
        is resolved: the woken request's task is then ahead of that pass in the loop's ready
        queue, so it runs scheduling and pre-request (which add its load to the chosen
        endpoint's metrics) before the next saturation reading. Releasing a whole batch
        against one reading would overshoot the pool exactly when it is near saturation.
        """
        self._pass = None
        if not self._totals.count or self._closed:
            return
        now = self._clock()
        saturation = self._read_saturation(now)
        for band in self._order:
            if not band.count:
                continue
            if saturation >= self._usage_limit.ceiling(band.priority, saturation, self._priorities):
                return  # head-of-line blocking: no lower band may overtake a blocked higher one
            view = band.settings.fairness.pick_flow(band.state, band.flow_views(), now)
            flow = band.flows.get(view.key) if view is not None else None
            if flow is None:
                log.error("fairness policy %s picked no flow of non-empty band %d",
                          _type_name(band.settings.fairness), band.priority)
                return
            request = flow.queue.pop(now)
            self._detach(band, flow, request, now)
            future = self._waiters.pop(request)
            if future.cancelled():
                # Its task was cancelled and has not run its handler yet; it leaves as cancelled.
                self._left(request, QueueOutcome.EVICTED_CANCELLED, now - request.enqueued_at)
            else:
                future.set_result(None)
                self._dispatched(request, now - request.enqueued_at, now)
            if self._totals.count and self._loop is not None:
                self._pass = self._loop.call_soon(self._dispatch_pass)
            return

    def _read_saturation(self, now: float) -> float:
        value = self._detector.saturation(self._endpoints(), now)
        self._saturation = value
        self._saturation_at = now
        if self._observer is not None:
            self._observer.saturation(value)
        return value

    def _dispatched(self, request: FlowControlRequest, waited: float, now: float) -> None:
        if self._workloads is not None:
            self._workloads.record_dispatch(request.workload.workload_id, waited, now)
        self._left(request, QueueOutcome.DISPATCHED, waited)

    # ----------------------------------------------------------------- leaving the queue

    def _detach(self, band: _Band, flow: _Flow, request: FlowControlRequest, now: float) -> None:
        """Account for ``request`` having left ``flow``'s queue (already popped or removed)."""
        size = request.size_bytes
        flow.bytes -= size
        band.count -= 1
        band.bytes -= size
        self._totals.count -= 1
        self._totals.bytes -= size
        if not len(flow.queue):
            del band.flows[flow.key]
            band.views = None
        if not band.count:
            band.empty_since = now
        if self._observer is not None:
            self._observer.queued(request, -1, -size)

    def _remove(self, request: FlowControlRequest, now: float) -> asyncio.Future[None]:
        """Take a queued request out of its flow; returns its (unresolved) future."""
        band = self._bands[request.flow.priority]
        flow = band.flows[request.flow]
        flow.queue.remove(request)
        self._detach(band, flow, request, now)
        return self._waiters.pop(request)

    def _evict(self, request: FlowControlRequest, outcome: QueueOutcome, error: Exception, now: float) -> None:
        future = self._remove(request, now)
        if future.cancelled():
            outcome = QueueOutcome.EVICTED_CANCELLED
        else:
            future.set_exception(error)
        self._left(request, outcome, now - request.enqueued_at)

    def _left(self, request: FlowControlRequest, outcome: QueueOutcome, waited: float) -> None:
        if self._observer is not None:
            self._observer.left(request, outcome, waited)

    def evict_expired(self) -> int:
        """Fail every request whose TTL has run out with 503; returns how many."""
        now = self._clock()
        heap = self._deadlines
        evicted = 0
        while heap and heap[0][0] <= now:
            _, _, request = heapq.heappop(heap)
            if request in self._waiters:
                self._evict(request, QueueOutcome.EVICTED_TTL, ServiceUnavailable(
                    f"request waited its TTL of {request.ttl:g}s in the flow control queue"), now)
                evicted += 1
        if len(heap) > 64 and len(heap) > 2 * len(self._waiters):
            # Dispatched and cancelled requests leave stale entries; drop them before they pile up.
            self._deadlines = [e for e in heap if e[2] in self._waiters]
            heapq.heapify(self._deadlines)
        if evicted:
            self.notify()  # freed band capacity does not change saturation, but keeps the pass logic uniform
        return evicted

    def close(self) -> None:
        """Fail everything queued with 503 "picker shutting down"; later arrivals get the same."""
        self._closed = True
        if self._pass is not None:
            self._pass.cancel()
            self._pass = None
        now = self._clock()
        for request in list(self._waiters):
            self._evict(request, QueueOutcome.EVICTED_OTHER, ServiceUnavailable("picker shutting down"), now)
        self._deadlines.clear()

    # ----------------------------------------------------------------- background task

    async def run(self) -> None:
        """Poll passes and TTL sweeps while anything waits; idle otherwise. Cancelling it closes the queue."""
        self._loop = asyncio.get_running_loop()
        self._closed = False
        next_maintenance = self._clock()
        try:
            while True:
                now = self._clock()
                if now >= next_maintenance:
                    self._maintain(now)
                    next_maintenance = now + MAINTENANCE_INTERVAL
                if not self._totals.count:
                    await self._sleep(MAINTENANCE_INTERVAL)
                    continue
                self.evict_expired()
                # Saturation changes as metrics arrive, whether or not anyone calls notify().
                self.notify()
                deadline = self._deadlines[0][0] if self._deadlines else math.inf
                await self._sleep(max(0.0, min(self._settings.poll_interval, SWEEP_INTERVAL, deadline - now)))
        finally:
            self.close()

    async def _sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``; an arrival in an empty queue or an earlier deadline wakes it."""
        self._wake.clear()
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _maintain(self, now: float) -> None:
        if self._workloads is not None:
            self._workloads.expire(now)
        expiry = self._settings.band_idle_expiry
        idle = [b.priority for b in self._order
                if not b.configured and not b.count and now - b.empty_since >= expiry]
        if idle:
            for priority in idle:
                del self._bands[priority]
            self._reorder()
        if not self._totals.count:
            self._read_saturation(now)  # keeps the pool saturation gauge fresh while nothing waits


def _type_name(policy: object) -> str:
    return str(getattr(policy, "TYPE", type(policy).__name__))
