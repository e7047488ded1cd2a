"""``prefix-cache-affinity-filter``: keep only endpoints that hold most of the prefix.

Logic (GIE): with at most one endpoint, or ``affinityThreshold`` ≤ 0, keep all. With
probability ``explorationProbability`` keep all (so new replicas get to warm up).
Otherwise keep the "sticky" endpoints whose prefix score (matched / total blocks) is at
least ``affinityThreshold``; if none is sticky, keep all. When latency predictions are
available and the best sticky endpoint's predicted TTFT exceeds the best other
endpoint's by more than ``maxTTFTPenaltyMs``, stickiness is broken and all are kept.

Parameters: ``affinityThreshold`` (0.80, ≤ 1), ``explorationProbability`` (0.01, in
[0, 1]), ``maxTTFTPenaltyMs`` (5000, ≥ 0; 0 disables the TTFT check).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from epp.datalayer.endpoint import Endpoint
from epp.framework.attributes import PREFIX_MATCH_KEY, prefix_match
from epp.framework.params import require
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.scheduling import CycleState
from epp.requests.types import InferenceRequest

__all__ = ["PREDICTED_TTFT_KEY", "PrefixAffinityFilterParams", "PrefixCacheAffinityFilter"]

# Written by a latency predictor (endpoint name → predicted TTFT in ms), when one runs.
PREDICTED_TTFT_KEY = "PredictedTTFTMs"


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefixAffinityFilterParams:
    affinity_threshold: float = 0.80
    exploration_probability: float = 0.01
    max_ttft_penalty_ms: float = field(default=5000.0, metadata={"key": "maxTTFTPenaltyMs"})

    def __post_init__(self) -> None:
        require(self.affinity_threshold <= 1.0, "affinity_threshold", "must be <= 1.0", self.affinity_threshold)
        require(0.0 <= self.exploration_probability <= 1.0, "exploration_probability", "must be in [0, 1]",
                self.exploration_probability)
        require(self.max_ttft_penalty_ms >= 0, "max_ttft_penalty_ms", "must be >= 0", self.max_ttft_penalty_ms)


def _best_ttft(endpoints: list[Endpoint], predictions: Mapping[str, float]) -> float:
    values = [predictions[ep.name] for ep in endpoints if ep.name in predictions]
    return min(values) if values else math.inf


class PrefixCacheAffinityFilter(BasePlugin):
    """Narrows candidates to endpoints holding at least a threshold of the prompt's prefix."""

    TYPE = "prefix-cache-affinity-filter"
    PARAMS = PrefixAffinityFilterParams
    CONSUMES = frozenset({PREFIX_MATCH_KEY})
    params: PrefixAffinityFilterParams

    def __init__(self, name: str, params: PrefixAffinityFilterParams | None, handle: Handle) -> None:
        super().__init__(name, params or PrefixAffinityFilterParams(), handle)
        self._rng = handle.rng

    def filter(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        p = self.params
        if len(endpoints) <= 1 or p.affinity_threshold <= 0:
            return endpoints
        if p.exploration_probability > 0 and self._rng.random() < p.exploration_probability:
            return endpoints
        match = prefix_match(cycle)
        sticky = [ep for ep in endpoints if match.ratio(ep.name) >= p.affinity_threshold]
        if not sticky:
            return endpoints
        predictions = cycle.get(PREDICTED_TTFT_KEY)
        if p.max_ttft_penalty_ms > 0 and isinstance(predictions, Mapping) and len(sticky) < len(endpoints):
            others = [ep for ep in endpoints if ep not in sticky]
            sticky_best, other_best = _best_ttft(sticky, predictions), _best_ttft(others, predictions)
            if math.isfinite(sticky_best) and sticky_best - other_best > p.max_ttft_penalty_ms:
                return endpoints
        return sticky
