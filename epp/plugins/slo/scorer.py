"""``latency-scorer``: prefer endpoints by predicted latency headroom against the request's SLO.

Reads the ``LatencyPredictions`` that ``predicted-latency-producer`` publishes; headroom is
``objective - predicted`` per dimension (TTFT, TPOT), in milliseconds. Semantics follow
the Go EPP's ``latency-scorer`` (``pkg/epp/framework/plugins/scheduling/scorer/latency``):

- An endpoint is *negative* when either headroom is below 0. When some endpoints are
  positive, only those are scored; the negative ones get 0.
- All negative: endpoints with nothing dispatched are scored alone (an idle endpoint is
  the best bet when nothing is predicted to meet the objective); otherwise the least
  severe non-empty *deficit bucket* is scored alone: only TPOT violated, then only TTFT
  violated, then both.
- Within the scored set, ``|headroom|`` is min-max normalised per dimension and blended
  as ``ttftWeight * nTTFT + tpotWeight * nTPOT`` (weights normalised to sum 1). A
  dimension whose values are all equal gets weight 0 (it would only compress the scores).
  ``least`` (default) scores the endpoint closest to its objective highest (bin packing:
  capacity elsewhere stays free for later requests); ``most`` the one with the most
  headroom. Negative headroom always uses ``least`` (the smallest deficit), since
  ``most`` would favour the most overloaded endpoint.
- When all are negative (the idle group and the deficit buckets), endpoints are ranked by
  their *deficits*, ``max(0, -headroom)`` per dimension, not by ``|headroom|``: a dimension
  an endpoint meets has no deficit. Ranking by ``|headroom|`` there (as the Go scorer does)
  means that in the "only TPOT violated" bucket the endpoint with the least TTFT room to
  spare scores highest, so a request whose TPOT objective no endpoint is predicted to meet
  goes to the *slowest* endpoint that meets its TTFT, the one that misses the TPOT worst.
- Scores are quantised as in Go to ``(int(x * 100) + 1) / 100``, so every scored
  endpoint keeps a small positive weight for a weighted-random picker.
- No predictions at all (producer not configured or failing): a composite of free KV
  cache, relative queue length and prefix match, weighted by the ``composite*Weight``
  parameters.

A request without objectives has headroom ``0 - predicted`` in both dimensions (always
negative), exactly as in Go: it lands in the idle-first / both-violated path, where
``least`` means "lowest predicted latency".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from epp.datalayer.endpoint import Endpoint
from epp.framework.attributes import (
    LATENCY_PREDICTIONS_KEY,
    PREFIX_MATCH_KEY,
    LatencyPrediction,
    latency_predictions,
    prefix_match,
)
from epp.framework.params import require
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.scheduling import CycleState, ScorerCategory
from epp.requests.types import InferenceRequest

__all__ = ["LatencyScorer", "LatencyScorerParams"]

Strategy = Literal["least", "most"]

# Go's integer weight scale: scores are (int(x * _W_MAX) + 1) / _W_MAX.
_W_MAX = 100
_EPS = 1e-9


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencyScorerParams:
    ttft_weight: float = field(default=0.8, metadata={"key": "ttftWeight"})
    tpot_weight: float = field(default=0.2, metadata={"key": "tpotWeight"})
    headroom_selection_strategy: Strategy = "least"
    composite_kv_weight: float = field(default=1.0, metadata={"key": "compositeKVWeight"})
    composite_queue_weight: float = 1.0
    composite_prefix_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("ttft_weight", "tpot_weight", "composite_kv_weight", "composite_queue_weight",
                     "composite_prefix_weight"):
            value = getattr(self, name)
            require(value >= 0, name, "must be >= 0", value)


@dataclass(frozen=True, slots=True)
class _Candidate:
    index: int
    prediction: LatencyPrediction


class LatencyScorer(BasePlugin):
    """Scores endpoints by predicted TTFT/TPOT headroom; composite KV/queue/prefix fallback."""

    TYPE = "latency-scorer"
    PARAMS = LatencyScorerParams
    CONSUMES = frozenset({LATENCY_PREDICTIONS_KEY, PREFIX_MATCH_KEY})
    params: LatencyScorerParams

    def __init__(self, name: str, params: LatencyScorerParams | None, handle: Handle) -> None:
        super().__init__(name, params or LatencyScorerParams(), handle)

    def category(self) -> ScorerCategory:
        return ScorerCategory.BALANCE

    def score(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> Sequence[float]:
        predictions = latency_predictions(cycle)
        candidates = [_Candidate(i, p) for i, ep in enumerate(endpoints)
                      if (p := predictions.get(ep.name)) is not None]
        if not candidates:
            return self._composite(cycle, endpoints)
        scores = [0.0] * len(endpoints)
        # An endpoint without a prediction cannot be shown to meet the objective: it stays at 0.
        positive = [c for c in candidates if not _negative(c.prediction)]
        if positive:
            self._score_group(positive, scores, self.params.headroom_selection_strategy)
            return scores
        idle = [c for c in candidates if c.prediction.dispatched == 0]
        self._score_group(idle or _least_severe_bucket(candidates), scores, "least", deficits=True)
        return scores

    def _score_group(self, group: list[_Candidate], scores: list[float], strategy: Strategy,
                     deficits: bool = False) -> None:
        alpha, beta = _normalised(self.params.ttft_weight, self.params.tpot_weight)
        if deficits:
            ttft = [max(0.0, -c.prediction.ttft_headroom_ms) for c in group]
            tpot = [max(0.0, -c.prediction.tpot_headroom_ms) for c in group]
        else:
            ttft = [abs(c.prediction.ttft_headroom_ms) for c in group]
            tpot = [abs(c.prediction.tpot_headroom_ms) for c in group]
        ttft_low, ttft_range = min(ttft), max(ttft) - min(ttft)
        tpot_low, tpot_range = min(tpot), max(tpot) - min(tpot)
        if ttft_range <= _EPS < tpot_range:
            alpha, beta = 0.0, 1.0
        elif tpot_range <= _EPS < ttft_range:
            alpha, beta = 1.0, 0.0
        for candidate, t1, t2 in zip(group, ttft, tpot, strict=True):
            n_ttft = (t1 - ttft_low) / ttft_range if ttft_range > _EPS else 0.5
            n_tpot = (t2 - tpot_low) / tpot_range if tpot_range > _EPS else 0.5
            combined = alpha * n_ttft + beta * n_tpot
            preference = combined if strategy == "most" else 1.0 - combined
            # Go truncates to an integer weight and adds 1; the top weight 101 clamps to 1.0.
            scores[candidate.index] = min(1.0, (int(preference * _W_MAX) + 1) / _W_MAX)

    def _composite(self, cycle: CycleState, endpoints: list[Endpoint]) -> list[float]:
        p = self.params
        w_kv, w_queue, w_prefix = p.composite_kv_weight, p.composite_queue_weight, p.composite_prefix_weight
        total = w_kv + w_queue + w_prefix
        if total <= 0:
            w_kv, w_queue, w_prefix, total = 1.0, 0.0, 0.0, 1.0
        match = prefix_match(cycle)
        max_queue = max((ep.metrics.waiting_queue_size for ep in endpoints), default=0)
        scores = []
        for ep in endpoints:
            metrics = ep.metrics
            rel_queue = (max_queue - metrics.waiting_queue_size) / max_queue if max_queue > 0 else 1.0
            kv_free = 1.0 - metrics.kv_cache_usage_percent
            composite = (w_kv * kv_free + w_queue * rel_queue + w_prefix * match.ratio(ep.name)) / total
            scores.append(math.floor(composite * _W_MAX + 0.5) / _W_MAX)  # Go's math.Round: half away from 0
        return scores


def _negative(prediction: LatencyPrediction) -> bool:
    return prediction.ttft_headroom_ms < 0 or prediction.tpot_headroom_ms < 0


def _least_severe_bucket(candidates: list[_Candidate]) -> list[_Candidate]:
    """Only TPOT violated, else only TTFT violated, else both: TTFT is what users feel first."""
    tpot_only = [c for c in candidates if c.prediction.ttft_headroom_ms >= 0]
    if tpot_only:
        return tpot_only
    ttft_only = [c for c in candidates if c.prediction.tpot_headroom_ms >= 0]
    return ttft_only or candidates


def _normalised(a: float, b: float) -> tuple[float, float]:
    total = a + b
    return (1.0, 0.0) if total <= 0 else (a / total, b / total)
