"""``load-imbalance-filter`` (ours, not in the Go EPP): never pile requests onto one replica.

Affinity scorers (prefix cache, LoRA) keep sending a hot prefix to the replica that
holds it, and the Go EPP's queue scorer cannot stop them: it min-max normalises, so a
queue of 50 costs the hot replica no more than a queue of 1, and with GIE's weights
(queue 2 < prefix 3) a full prefix match always wins. This filter removes endpoints whose
waiting queue is far longer than the shortest one, before scorers run, so a hot prefix
spills over to a second replica (which then holds the prefix too) instead of queueing.

Load is the endpoint's waiting queue: scraped, plus the requests routed there since that
scrape (dispatch accounting), so a burst inside one scrape interval counts. Running
requests are not load here: a replica with free slots is not overloaded. An endpoint is
removed when both hold (as in SGLang's cache-aware policy): ``waiting - min_waiting >
absoluteThreshold`` and ``waiting > relativeThreshold × min_waiting``. The endpoint with
the shortest queue always stays, so the filter never empties the list.

Measured: 24 concurrent requests on one cold prefix, 3 replicas of 4 slots each: 24/0/0
without the filter, spread with it (``tests/e2e/test_routing.py``).

Parameters: ``absoluteThreshold`` (8 requests, ≥ 0), ``relativeThreshold`` (1.5, ≥ 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from epp.datalayer.endpoint import Endpoint
from epp.framework.params import require
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.scheduling import CycleState
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
    """Drops endpoints whose queue is far longer than the shortest (spills hot prefixes over)."""

    TYPE = "load-imbalance-filter"
    PARAMS = LoadImbalanceParams
    params: LoadImbalanceParams

    def __init__(self, name: str, params: LoadImbalanceParams | None, handle: Handle) -> None:
        super().__init__(name, params or LoadImbalanceParams(), handle)

    def filter(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        if len(endpoints) <= 1:
            return endpoints
        low = min(ep.metrics.waiting_queue_size for ep in endpoints)
        ceiling = max(low + self.params.absolute_threshold, low * self.params.relative_threshold)
        return [ep for ep in endpoints if ep.metrics.waiting_queue_size <= ceiling]
