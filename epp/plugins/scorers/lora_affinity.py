"""``lora-affinity-scorer``: prefer endpoints that can serve the request's LoRA adapter soonest.

Per endpoint, from ``vllm:lora_requests_info``: 1.0 if the target adapter is running
there; 0.8 if the endpoint has a free adapter slot (distinct adapters with requests <
``max_lora``); 0.6 if the adapter is waiting there; else 0 (the Go EPP's tiers). The target
is the model name after rewrite. Endpoints that report no LoRA info (no ``max_lora``) score
0 unless the adapter is active.

Go counts slots as ``len(running) + len(waiting)``. vLLM 0.32 lists every adapter with a
request in both labels, so that sum counted each adapter twice and a server with one of two
slots used had "no free slot". Slots here are the union of the two sets, which is the same
as Go's sum for older vLLM (disjoint lists). The core-metrics extractor decides which
adapters are known to run (``epp.plugins.datalayer.lora_info``); one that may only be
queued is never counted as running. Category: Affinity. No parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.datalayer.endpoint import Endpoint
from epp.framework.plugin import BasePlugin
from epp.framework.scheduling import CycleState, ScorerCategory
from epp.requests.types import InferenceRequest

__all__ = ["LoraAffinityScorer"]


def lora_score(endpoint: Endpoint, adapter: str) -> float:
    m = endpoint.metrics
    if adapter in m.active_models:
        return 1.0
    active, waiting = m.active_models, m.waiting_models
    used = len(active | waiting) if active and waiting else len(active) + len(waiting)
    if used < m.max_active_models:
        return 0.8
    if adapter in m.waiting_models:
        return 0.6
    return 0.0


class LoraAffinityScorer(BasePlugin):
    """Prefers endpoints where the requested LoRA adapter is loaded, then ones with a free slot."""

    TYPE = "lora-affinity-scorer"

    def category(self) -> ScorerCategory:
        return ScorerCategory.AFFINITY

    def score(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> Sequence[float]:
        adapter = request.target_model
        return [lora_score(ep, adapter) for ep in endpoints]
