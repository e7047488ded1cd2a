"""``load-imbalance-filter`` (ours, not in the Go EPP): never pile requests onto one replica.

Affinity scorers (prefix cache, LoRA) keep sending a hot prefix to the replica that
holds it; the Go EPP's queue scorer min-max normalises, so a queue of 50 costs the hot
replica no more than a queue of 1, and a hot prefix can collapse onto one replica. This
filter removes endpoints that are overloaded relative to the least-loaded candidate,
before scorers run, so the hot prefix spills over to a second replica (which then
holds the prefix too) instead of queueing.

Load of an endpoint = max(requests this picker has in flight there, running + waiting
requests from its last scrape): the first is fresh, the second counts traffic from
other sources. An endpoint is removed when both hold (as in SGLang's cache-aware
policy): ``load - min_load > absoluteThreshold`` and ``load > relativeThreshold ×
min_load``. The least-loaded endpoint always stays, so the filter never empties the list.

Parameters: ``absoluteThreshold`` (8 requests, ≥ 0), ``relativeThreshold`` (1.5, ≥ 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from epp.datalayer.endpoint import Endpoint
from epp.framework.params import require
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.scheduling import CycleState
from epp.plugins.inflight.producer import INFLIGHT_LOAD_KEY, InFlightLoadProducer
from epp.requests.types import InferenceRequest

__all__ = ["LoadImbalanceFilter", "LoadImbalanceParams"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadImbalanceParams:
    absolute_threshold: int = 8
    relative_threshold: float = 1.5

    def __post_init__(self) -> None:
        require(self.absolute_threshold >= 0, "absolute_threshold", "must be >= 0", self.absolute_threshold)
        require(self.relative_threshold >= 1.0, "relative_threshold", "must be >= 1", self.relative_threshold)


class LoadImbalanceFilter(BasePlugin):
    """Drops endpoints far more loaded than the least-loaded one (spills hot prefixes over)."""

    TYPE = "load-imbalance-filter"
    PARAMS = LoadImbalanceParams
    CONSUMES = frozenset({INFLIGHT_LOAD_KEY})
    params: LoadImbalanceParams

    def __init__(self, name: str, params: LoadImbalanceParams | None, handle: Handle) -> None:
        super().__init__(name, params or LoadImbalanceParams(), handle)

    def filter(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        if len(endpoints) <= 1:
            return endpoints
        inflight = cycle.get(INFLIGHT_LOAD_KEY)
        tracker = inflight if isinstance(inflight, InFlightLoadProducer) else None
        loads = [
            max(tracker.requests(ep.name) if tracker else 0,
                ep.metrics.running_requests_size + ep.metrics.waiting_queue_size)
            for ep in endpoints
        ]
        low = min(loads)
        ceiling_abs = low + self.params.absolute_threshold
        ceiling_rel = low * self.params.relative_threshold
        return [ep for ep, load in zip(endpoints, loads, strict=True) if load <= ceiling_abs or load <= ceiling_rel]
