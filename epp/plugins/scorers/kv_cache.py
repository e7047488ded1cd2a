"""``kv-cache-utilization-scorer``: prefer endpoints with free KV cache.

Score = ``1 - kv_cache_usage`` (vLLM reports usage as a fraction in [0, 1]).
Category: Distribution. No parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.datalayer.endpoint import Endpoint
from epp.framework.plugin import BasePlugin
from epp.framework.scheduling import CycleState, ScorerCategory
from epp.requests.types import InferenceRequest

__all__ = ["KVCacheUtilizationScorer"]


class KVCacheUtilizationScorer(BasePlugin):
    """Prefers endpoints with lower KV-cache utilisation (1 - usage)."""

    TYPE = "kv-cache-utilization-scorer"

    def category(self) -> ScorerCategory:
        return ScorerCategory.DISTRIBUTION

    def score(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> Sequence[float]:
        return [1.0 - ep.metrics.kv_cache_usage_percent for ep in endpoints]
