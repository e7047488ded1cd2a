"""``slo-headroom-tier-filter``: keep the endpoints predicted to meet the request's SLO.

Splits the candidates into a *positive* tier (TTFT and TPOT headroom both >= 0) and a
*negative* tier (either below 0, or no prediction: it cannot be shown to meet the
objective). With both tiers present it keeps the positive tier, except with probability
``epsilonExploreNeg`` (0.01), when it keeps the negative tier: overloaded endpoints keep
seeing a trickle of traffic, so their predictions can recover. One tier empty: the other
is kept. No predictions at all (the producer did not run): every endpoint is kept.
As in the Go EPP, the tiers are read from the headroom signs, not the validity flags; a
request without objectives has negative headroom everywhere, so the filter keeps all.
The draw uses the handle's random source, so tests can seed it.
"""

from __future__ import annotations

from dataclasses import dataclass

from epp.datalayer.endpoint import Endpoint
from epp.framework.attributes import LATENCY_PREDICTIONS_KEY, latency_predictions
from epp.framework.params import require
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.scheduling import CycleState
from epp.requests.types import InferenceRequest

__all__ = ["SloHeadroomTierFilter", "SloHeadroomTierParams"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SloHeadroomTierParams:
    epsilon_explore_neg: float = 0.01

    def __post_init__(self) -> None:
        require(0.0 <= self.epsilon_explore_neg <= 1.0, "epsilon_explore_neg", "must be in [0, 1]",
                self.epsilon_explore_neg)


class SloHeadroomTierFilter(BasePlugin):
    """Keeps endpoints with non-negative predicted headroom (rarely, for exploration, the others)."""

    TYPE = "slo-headroom-tier-filter"
    PARAMS = SloHeadroomTierParams
    CONSUMES = frozenset({LATENCY_PREDICTIONS_KEY})
    params: SloHeadroomTierParams

    def __init__(self, name: str, params: SloHeadroomTierParams | None, handle: Handle) -> None:
        super().__init__(name, params or SloHeadroomTierParams(), handle)
        self._rng = handle.rng

    def filter(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        if len(endpoints) <= 1:
            return endpoints
        predictions = latency_predictions(cycle)
        positive: list[Endpoint] = []
        negative: list[Endpoint] = []
        predicted = False
        for ep in endpoints:
            p = predictions.get(ep.name)
            predicted = predicted or p is not None
            if p is not None and p.ttft_headroom_ms >= 0 and p.tpot_headroom_ms >= 0:
                positive.append(ep)
            else:
                negative.append(ep)
        if not predicted or not positive or not negative:
            return positive or endpoints
        # Drawn only when there is a choice, so the random stream is not consumed otherwise.
        return negative if self._rng.random() < self.params.epsilon_explore_neg else positive
