"""``token-load-scorer``: prefer endpoints with fewer estimated tokens in flight.

Score = ``1 - min(tokens, queueThresholdTokens) / queueThresholdTokens`` using the
in-flight tokens the ``inflight-load-producer`` publishes (created automatically when
absent); an endpoint with nothing in flight, or no in-flight data at all, scores 1.0.
Category: Distribution.
Parameter: ``queueThresholdTokens`` (4194304; > 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from epp.datalayer.endpoint import Endpoint
from epp.framework.attributes import INFLIGHT_LOAD_KEY, inflight_load
from epp.framework.params import require
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.scheduling import CycleState, ScorerCategory
from epp.requests.types import InferenceRequest

__all__ = ["TokenLoadParams", "TokenLoadScorer"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenLoadParams:
    queue_threshold_tokens: int = 4_194_304

    def __post_init__(self) -> None:
        require(self.queue_threshold_tokens > 0, "queue_threshold_tokens", "must be > 0", self.queue_threshold_tokens)


class TokenLoadScorer(BasePlugin):
    """Prefers endpoints with fewer estimated in-flight tokens."""

    TYPE = "token-load-scorer"
    PARAMS = TokenLoadParams
    CONSUMES = frozenset({INFLIGHT_LOAD_KEY})
    params: TokenLoadParams

    def __init__(self, name: str, params: TokenLoadParams | None, handle: Handle) -> None:
        super().__init__(name, params or TokenLoadParams(), handle)

    def category(self) -> ScorerCategory:
        return ScorerCategory.DISTRIBUTION

    def score(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> Sequence[float]:
        load = inflight_load(cycle)
        threshold = self.params.queue_threshold_tokens
        return [1.0 - min(load.tokens(ep.name), threshold) / threshold for ep in endpoints]
