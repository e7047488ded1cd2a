"""``latency-slo-admitter``: refuse a sheddable request that no endpoint is predicted to serve in time.

Only requests with priority < 0 (sheddable) that state an objective (``x-slo-ttft-ms`` or
``x-slo-tpot-ms``) are judged. Such a request is admitted when any candidate endpoint

- is predicted to meet every objective the request states (``LatencyPrediction.meets_slo``),
- is idle: this picker has nothing dispatched there (the Go EPP reads the scraped running
  count instead; the picker's own count is never a scrape interval late), or
- is cold: KV-cache usage under 2%, where the predictor has seen too little load to be
  trusted.

Otherwise it is refused with 500 ``request cannot be admitted`` (the Go director's answer
to any admitter denial: code Internal). Without predictions (the producer did not run or
failed) the request is admitted: a missing predictor must not shed traffic.

The predictions live in the request's cycle state, so ``admit`` takes it as an optional
third argument; called without it, the admitter admits (see the issue 9 report for the
director change that passes it).
"""

from __future__ import annotations

from epp.datalayer.endpoint import Endpoint
from epp.errors import InternalError
from epp.framework.attributes import LATENCY_PREDICTIONS_KEY, LatencyPredictions, latency_predictions
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.scheduling import CycleState
from epp.requests.types import InferenceRequest

__all__ = ["COLD_KV_USAGE", "LatencySloAdmitter"]

# Below this KV-cache usage an endpoint is "cold": predictions there are extrapolations.
COLD_KV_USAGE = 0.02


class LatencySloAdmitter(BasePlugin):
    """Rejects sheddable requests (priority < 0) when no endpoint can meet their latency objectives."""

    TYPE = "latency-slo-admitter"
    CONSUMES = frozenset({LATENCY_PREDICTIONS_KEY})

    def __init__(self, name: str, params: None, handle: Handle) -> None:
        super().__init__(name, params, handle)

    async def admit(self, request: InferenceRequest, endpoints: list[Endpoint],
                    cycle: CycleState | None = None) -> None:
        if cycle is None or request.priority >= 0:
            return
        if request.slo_ttft_ms is None and request.slo_tpot_ms is None:
            return
        if not admissible(latency_predictions(cycle), endpoints):
            raise InternalError("request cannot be admitted: no endpoint is predicted to meet the request's "
                                "latency objective, and none is idle or cold")


def admissible(predictions: LatencyPredictions, endpoints: list[Endpoint]) -> bool:
    """Whether some endpoint can take the request; always true without predictions."""
    if not any(predictions.get(ep.name) is not None for ep in endpoints):
        return True
    for ep in endpoints:
        if ep.metrics.kv_cache_usage_percent < COLD_KV_USAGE:
            return True
        p = predictions.get(ep.name)
        if p is not None and (p.meets_slo or p.dispatched == 0):
            return True
    return False
