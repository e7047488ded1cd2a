"""Contracts of the flow-control layer, shared by the controller and its policy plugins.

A request waiting for admission is a ``FlowControlRequest``: its flow (``FlowKey``: the
fairness id and the priority of its InferenceObjective), its size in bytes, when it
arrived and how long it may wait, and its ``WorkloadContext`` (seed 003: the workload's
identity and criticality travel on the request itself, typed, never copied into a
metadata map).

Dispatch is three tiers, as in the Go EPP: strict priority across bands (highest
first) → a ``FairnessPolicy`` picks the flow within a band → the flow's ``FlowQueue``
(made by the band's ``OrderingPolicy``) gives its best request. Before each dispatch the
controller asks the ``UsageLimitPolicy`` for the band's saturation ceiling and compares
it with the ``SaturationDetector``'s reading of the pool: at or above the ceiling the
whole cycle stops (no lower band overtakes a blocked higher one).

Everything here is synchronous and runs on the event loop: policies must be cheap
(O(log n) per push/pop, O(flows) per fairness pick) and must not raise.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from epp.datalayer.endpoint import Endpoint

__all__ = [
    "DEFAULT_CRITICALITY",
    "DEFAULT_WORKLOAD_ID",
    "FairnessPolicy",
    "FlowControlRequest",
    "FlowKey",
    "FlowQueue",
    "FlowView",
    "OrderingPolicy",
    "QueueOutcome",
    "SaturationDetector",
    "UsageLimitPolicy",
    "WorkloadContext",
    "WorkloadStats",
    "WorkloadStatsView",
]

DEFAULT_WORKLOAD_ID = "default"
DEFAULT_CRITICALITY = 3
MIN_CRITICALITY = 1
MAX_CRITICALITY = 5  # the most critical


@dataclass(frozen=True, slots=True)
class WorkloadContext:
    """Who sent the request and how much it matters (``x-workload-id``, ``x-workload-criticality``).

    ``criticality`` is 1 (least) to 5 (most critical); anything else means 3.
    """

    workload_id: str = DEFAULT_WORKLOAD_ID
    criticality: int = DEFAULT_CRITICALITY

    def __post_init__(self) -> None:
        if not MIN_CRITICALITY <= self.criticality <= MAX_CRITICALITY:
            object.__setattr__(self, "criticality", DEFAULT_CRITICALITY)


@dataclass(frozen=True, slots=True)
class FlowKey:
    """A flow: the requests of one fairness id at one priority."""

    fairness_id: str
    priority: int


class QueueOutcome(enum.StrEnum):
    """How a request left the queue (the ``outcome`` label, Go EPP names)."""

    DISPATCHED = "Dispatched"
    REJECTED_CAPACITY = "RejectedCapacity"
    REJECTED_OTHER = "RejectedOther"
    EVICTED_TTL = "EvictedTTL"
    EVICTED_CANCELLED = "EvictedContextCancelled"
    EVICTED_OTHER = "EvictedOther"


@dataclass(slots=True, eq=False)
class FlowControlRequest:
    """One request as flow control sees it. Identity-compared: two requests are never equal.

    Attributes:
        request_id: ``x-request-id``.
        flow: fairness id and priority.
        size_bytes: the request body's length (what counts against ``maxBytes``).
        received_at: ``time.monotonic()`` when its headers arrived.
        ttl: seconds it may wait in the queue (``math.inf``: until the client gives up).
        workload: the typed workload context (seed 003).
        slo_ttft_ms: the client's time-to-first-token objective (``x-slo-ttft-ms``), if any;
            ``slo-deadline-ordering-policy`` orders by ``received_at + slo_ttft_ms``.
        model, target_model: for metric labels.
        enqueued_at: set by the controller when the request enters the queue.
        seq: set by the controller; a strictly increasing arrival number (FCFS tie-break).
    """

    request_id: str
    flow: FlowKey
    size_bytes: int
    received_at: float
    ttl: float = math.inf
    workload: WorkloadContext = field(default_factory=WorkloadContext)
    slo_ttft_ms: float | None = None
    model: str = ""
    target_model: str = ""
    enqueued_at: float = 0.0
    seq: int = 0

    @property
    def expires_at(self) -> float:
        """When it is evicted from the queue if still waiting (``math.inf``: never)."""
        return self.enqueued_at + self.ttl


@dataclass(frozen=True, slots=True)
class WorkloadStats:
    """What the workload registry knows of one workload (read-only for plugins)."""

    average_wait: float = 0.0  # seconds, moving average over its dispatched requests
    request_rate: float = 0.0  # arrivals per second, moving average


class WorkloadStatsView(Protocol):
    """The read side of the workload registry (``epp.flowcontrol.workloads``)."""

    def stats(self, workload_id: str) -> WorkloadStats: ...


class FlowQueue(Protocol):
    """The waiting requests of one flow, in the order an ``OrderingPolicy`` defines.

    ``rank`` makes heads of different flows comparable for global-strict fairness: the
    lower rank goes first. It may depend on ``now`` (e.g. wait time), so it is recomputed
    on every pick, never cached by callers.
    """

    def __len__(self) -> int: ...

    def push(self, request: FlowControlRequest) -> None: ...

    def peek(self, now: float) -> FlowControlRequest | None:
        """The request that would be dispatched next, or ``None`` when empty."""
        ...

    def pop(self, now: float) -> FlowControlRequest:
        """Remove and return ``peek(now)``; raises ``IndexError`` when empty."""
        ...

    def remove(self, request: FlowControlRequest) -> bool:
        """Take a request out (TTL, disconnect); ``False`` if it is not queued here."""
        ...

    def rank(self, request: FlowControlRequest, now: float) -> tuple[float, ...]: ...

    def __iter__(self) -> Iterator[FlowControlRequest]:
        """Every queued request, in no particular order (TTL sweep, snapshots); a snapshot,
        so callers may ``remove`` while iterating."""
        ...


@runtime_checkable
class OrderingPolicy(Protocol):
    """Orders requests within a flow (``fcfs-ordering-policy``, ``edf-ordering-policy``, ...)."""

    def new_queue(self) -> FlowQueue: ...


class FlowView(Protocol):
    """One non-empty flow of a band, as a fairness policy sees it."""

    @property
    def key(self) -> FlowKey: ...

    @property
    def queue(self) -> FlowQueue: ...


@runtime_checkable
class FairnessPolicy(Protocol):
    """Chooses which flow of a band dispatches next.

    ``new_band_state`` is called once per band; the object it returns is handed back on
    every pick (a round-robin cursor lives there, not in the shared plugin instance).
    ``flows`` holds only non-empty flows, in a stable order (first arrival of the flow).
    The method is ``pick_flow``, not ``pick``: a plugin with ``pick`` would also pass as a
    scheduling ``Picker`` (runtime protocols match by method name) and be put in profiles.
    """

    def new_band_state(self) -> object: ...

    def pick_flow(self, state: object, flows: Sequence[FlowView], now: float) -> FlowView | None: ...


@runtime_checkable
class UsageLimitPolicy(Protocol):
    """The saturation ceiling a band may dispatch below (``static-usage-limit-policy``, ...).

    ``priorities``: every priority the controller has a band for, highest first (it always
    includes ``priority``), so a policy can rank bands against each other.
    """

    def ceiling(self, priority: int, saturation: float, priorities: Sequence[int]) -> float: ...


@runtime_checkable
class SaturationDetector(Protocol):
    """How full the pool is: 0 idle, 1.0 or more saturated (``utilization-detector``, ...)."""

    def saturation(self, endpoints: Sequence[Endpoint], now: float) -> float: ...
