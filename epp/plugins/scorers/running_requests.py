"""``running-requests-size-scorer``: prefer endpoints running fewer requests.

Score = ``(maxR - r) / (maxR - minR)`` over ``vllm:num_requests_running``; all equal → 1.0.
Category: Distribution. No parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.datalayer.endpoint import Endpoint
from epp.framework.plugin import BasePlugin
from epp.framework.scheduling import CycleState, ScorerCategory
from epp.plugins.scorers.normalize import inverse_min_max
from epp.requests.types import InferenceRequest

__all__ = ["RunningRequestsSizeScorer"]


class RunningRequestsSizeScorer(BasePlugin):
    """Prefers endpoints with fewer running requests (min-max normalised)."""

    TYPE = "running-requests-size-scorer"

    def category(self) -> ScorerCategory:
        return ScorerCategory.DISTRIBUTION

    def score(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> Sequence[float]:
        return inverse_min_max([ep.metrics.running_requests_size for ep in endpoints])
