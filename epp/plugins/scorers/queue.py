"""``queue-scorer``: prefer endpoints with fewer requests waiting.

Score = ``(maxQ - q) / (maxQ - minQ)`` over the candidates' ``vllm:num_requests_waiting``
(or the engine's equivalent); when every queue is equal, every endpoint scores 1.0.
Category: Distribution. No parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.datalayer.endpoint import Endpoint
from epp.framework.plugin import BasePlugin
from epp.framework.scheduling import CycleState, ScorerCategory
from epp.plugins.scorers.normalize import inverse_min_max
from epp.requests.types import InferenceRequest

__all__ = ["QueueScorer"]


class QueueScorer(BasePlugin):
    """Prefers endpoints with shorter waiting queues (min-max normalised)."""

    TYPE = "queue-scorer"

    def category(self) -> ScorerCategory:
        return ScorerCategory.DISTRIBUTION

    def score(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> Sequence[float]:
        return inverse_min_max([ep.metrics.waiting_queue_size for ep in endpoints])
