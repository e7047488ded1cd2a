"""Ordering policies: which request of a flow dispatches next.

- ``fcfs-ordering-policy``: first come, first served (by ``seq``, the controller's arrival
  number). An ``OrderedDict`` keyed by request identity gives O(1) push, pop and remove.
- ``edf-ordering-policy``: earliest deadline first, deadline = ``enqueued_at + ttl``.
- ``slo-deadline-ordering-policy``: deadline = ``received_at + slo_ttft_ms / 1000``.
- ``workload-aware-ordering-policy``: criticality, then a wait-and-rate fairness score
  between workloads (seed 003), described below.

For both deadline policies requests without a deadline (infinite TTL, no SLO) come after
every request with one, first come first served among themselves. They use a binary heap
with lazy deletion: ``remove`` only forgets the request, and the heap is rebuilt from the
live requests once dead entries outnumber them, so it never holds more than twice the
queue length however remove-heavy the traffic.

``rank`` (used by global-strict fairness to compare the heads of different flows) is the
same key each queue orders by, so one global order holds across flows of one policy.

Workload-aware ordering. Requests go by ``workload.criticality`` (5 first), then, among
equal criticality, by the highest urgency, then by arrival::

    urgency = (wait + average_wait + baseWait) / (1 + request_rate / referenceRate)

``wait`` is how long the request has queued; ``average_wait`` and ``request_rate`` are its
workload's moving averages from the workload registry (``handle.workloads``; zeros when
there is none or the workload is unknown). Why this shape:

- Dividing by the arrival rate gives each workload a share that shrinks as it floods: a
  workload at ``referenceRate`` counts half as much as an idle one, one at 50x counts
  1/51. Low-rate workloads therefore go ahead of a flooder of the same criticality.
- ``wait`` grows without bound while the divisor is fixed, so every request ages: a
  flooder's head overtakes a fresh request of a light workload once it has waited about
  ``(1 + rate / referenceRate) * baseWait`` seconds. Its wait is stretched, never infinite.
- ``average_wait`` is credit for workloads that have been kept waiting lately, so a
  workload squeezed out for a while catches up instead of staying behind.
- ``baseWait`` (> 0) lets the rate matter even for requests that arrived this instant
  (with zero wait every score would tie at 0).

Criticality stays dominant because ``rank`` compares it before the urgency. Each pick is
O(W), W the number of (workload, criticality) pairs queued: requests of one pair share a
FIFO sub-queue and only its head, the oldest and so the most urgent, is scored.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from epp.flowcontrol.types import FlowControlRequest, WorkloadStats
from epp.framework.params import Duration, require
from epp.framework.plugin import BasePlugin, Handle

__all__ = [
    "DeadlineQueue",
    "EdfOrderingPolicy",
    "FcfsOrderingPolicy",
    "FcfsQueue",
    "SloDeadlineOrderingPolicy",
    "WorkloadAwareOrderingPolicy",
    "WorkloadAwareParams",
    "WorkloadAwareQueue",
    "edf_deadline",
    "slo_deadline",
]


class FcfsQueue:
    """Requests in arrival order. The controller pushes in ``seq`` order, so FIFO is FCFS."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: OrderedDict[FlowControlRequest, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[FlowControlRequest]:
        return iter(list(self._items))

    def push(self, request: FlowControlRequest) -> None:
        self._items[request] = None

    def peek(self, now: float) -> FlowControlRequest | None:
        return next(iter(self._items), None)

    def pop(self, now: float) -> FlowControlRequest:
        if not self._items:
            raise IndexError("pop from an empty flow queue")
        request, _ = self._items.popitem(last=False)
        return request

    def remove(self, request: FlowControlRequest) -> bool:
        if request not in self._items:
            return False
        del self._items[request]
        return True

    def rank(self, request: FlowControlRequest, now: float) -> tuple[float, ...]:
        return (request.enqueued_at, request.seq)


class FcfsOrderingPolicy(BasePlugin):
    """First come, first served within a flow."""

    TYPE = "fcfs-ordering-policy"

    def __init__(self, name: str, params: None, handle: Handle) -> None:
        super().__init__(name, params, handle)

    def new_queue(self) -> FcfsQueue:
        return FcfsQueue()


def _finite_or_inf(value: float) -> float:
    # NaN would break the heap invariant; treat it like "no deadline".
    return value if not math.isnan(value) else math.inf


def edf_deadline(request: FlowControlRequest) -> float:
    """When the request's queue TTL runs out (``inf`` for no TTL)."""
    return _finite_or_inf(request.enqueued_at + request.ttl)


def slo_deadline(request: FlowControlRequest) -> float:
    """When the client's time-to-first-token objective runs out (``inf`` without one)."""
    if request.slo_ttft_ms is None:
        return math.inf
    return _finite_or_inf(request.received_at + request.slo_ttft_ms / 1000.0)


# (deadline, seq, push token, request): the unique token means requests are never compared.
_Entry = tuple[float, int, int, FlowControlRequest]


class DeadlineQueue:
    """Earliest ``deadline(request)`` first, ties (and all ``inf`` deadlines) by ``seq``."""

    __slots__ = ("_deadline", "_heap", "_live", "_tokens")

    def __init__(self, deadline: Callable[[FlowControlRequest], float]) -> None:
        self._deadline = deadline
        self._heap: list[_Entry] = []
        # request -> token of its live heap entry; an entry whose token differs is dead
        # (removed, or superseded by a later push of the same request).
        self._live: dict[FlowControlRequest, int] = {}
        self._tokens = 0

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[FlowControlRequest]:
        return iter(list(self._live))

    @property
    def heap_size(self) -> int:
        """Entries held, live and dead (for tests of the compaction bound)."""
        return len(self._heap)

    def push(self, request: FlowControlRequest) -> None:
        self._tokens += 1
        self._live[request] = self._tokens
        heapq.heappush(self._heap, (self._deadline(request), request.seq, self._tokens, request))
        self._compact_if_sparse()

    def peek(self, now: float) -> FlowControlRequest | None:
        heap = self._heap
        while heap:
            _, _, token, request = heap[0]
            if self._live.get(request) == token:
                return request
            heapq.heappop(heap)
        return None

    def pop(self, now: float) -> FlowControlRequest:
        request = self.peek(now)
        if request is None:
            raise IndexError("pop from an empty flow queue")
        heapq.heappop(self._heap)
        del self._live[request]
        self._compact_if_sparse()
        return request

    def remove(self, request: FlowControlRequest) -> bool:
        if self._live.pop(request, None) is None:
            return False
        self._compact_if_sparse()
        return True

    def rank(self, request: FlowControlRequest, now: float) -> tuple[float, ...]:
        return (self._deadline(request), request.seq)

    def _compact_if_sparse(self) -> None:
        if len(self._heap) - len(self._live) > len(self._live):
            live = self._live
            self._heap = [entry for entry in self._heap if live.get(entry[3]) == entry[2]]
            heapq.heapify(self._heap)


class EdfOrderingPolicy(BasePlugin):
    """Earliest queue deadline (``enqueued_at + ttl``) first."""

    TYPE = "edf-ordering-policy"

    def __init__(self, name: str, params: None, handle: Handle) -> None:
        super().__init__(name, params, handle)

    def new_queue(self) -> DeadlineQueue:
        return DeadlineQueue(edf_deadline)


class SloDeadlineOrderingPolicy(BasePlugin):
    """Earliest time-to-first-token deadline (``received_at + slo_ttft_ms``) first."""

    TYPE = "slo-deadline-ordering-policy"

    def __init__(self, name: str, params: None, handle: Handle) -> None:
        super().__init__(name, params, handle)

    def new_queue(self) -> DeadlineQueue:
        return DeadlineQueue(slo_deadline)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadAwareParams:
    reference_rate: float = 1.0
    base_wait: Duration = Duration(1.0)

    def __post_init__(self) -> None:
        require(math.isfinite(self.reference_rate) and self.reference_rate > 0, "reference_rate",
                "must be finite and > 0", self.reference_rate)
        require(math.isfinite(self.base_wait) and self.base_wait > 0, "base_wait", "must be finite and > 0",
                self.base_wait)


_SubQueueKey = tuple[str, int]  # (workload id, criticality)


class WorkloadAwareQueue:
    """One FIFO sub-queue per (workload, criticality); only the sub-queue heads are scored."""

    __slots__ = ("_handle", "_params", "_subqueues", "_where")

    def __init__(self, params: WorkloadAwareParams, handle: Handle) -> None:
        self._params = params
        # Read ``handle.workloads`` at every pick, not once: the registry may be attached to
        # the handle after the plugin is built.
        self._handle = handle
        self._subqueues: dict[_SubQueueKey, OrderedDict[FlowControlRequest, None]] = {}
        self._where: dict[FlowControlRequest, _SubQueueKey] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __iter__(self) -> Iterator[FlowControlRequest]:
        return iter(list(self._where))

    def push(self, request: FlowControlRequest) -> None:
        if request in self._where:
            return
        key = (request.workload.workload_id, request.workload.criticality)
        self._where[request] = key
        self._subqueues.setdefault(key, OrderedDict())[request] = None

    def peek(self, now: float) -> FlowControlRequest | None:
        best: FlowControlRequest | None = None
        best_rank: tuple[float, ...] = ()
        for subqueue in self._subqueues.values():
            head = next(iter(subqueue))
            rank = self.rank(head, now)
            if best is None or rank < best_rank:
                best, best_rank = head, rank
        return best

    def pop(self, now: float) -> FlowControlRequest:
        request = self.peek(now)
        if request is None:
            raise IndexError("pop from an empty flow queue")
        self.remove(request)
        return request

    def remove(self, request: FlowControlRequest) -> bool:
        key = self._where.pop(request, None)
        if key is None:
            return False
        subqueue = self._subqueues[key]
        del subqueue[request]
        if not subqueue:
            del self._subqueues[key]
        return True

    def rank(self, request: FlowControlRequest, now: float) -> tuple[float, ...]:
        return (-request.workload.criticality, -self.urgency(request, now), request.seq)

    def urgency(self, request: FlowControlRequest, now: float) -> float:
        """The fairness score among requests of equal criticality (higher goes first)."""
        workloads = self._handle.workloads
        stats = workloads.stats(request.workload.workload_id) if workloads is not None else WorkloadStats()
        wait = max(0.0, now - request.enqueued_at)
        rate = max(0.0, stats.request_rate)
        credit = wait + max(0.0, stats.average_wait) + self._params.base_wait
        return credit / (1.0 + rate / self._params.reference_rate)


class WorkloadAwareOrderingPolicy(BasePlugin):
    """Criticality first, then a wait-and-rate fairness score between workloads (seed 003).

    The formula and its reasons are in the module docstring.

    Parameters: ``referenceRate`` (requests/s, 1.0; > 0), ``baseWait`` (duration, 1s; > 0).
    """

    TYPE = "workload-aware-ordering-policy"
    PARAMS = WorkloadAwareParams
    params: WorkloadAwareParams

    def __init__(self, name: str, params: WorkloadAwareParams | None, handle: Handle) -> None:
        super().__init__(name, params or WorkloadAwareParams(), handle)
        self._handle = handle

    def new_queue(self) -> WorkloadAwareQueue:
        return WorkloadAwareQueue(self.params, self._handle)
