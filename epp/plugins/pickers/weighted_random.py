"""``weighted-random-picker``: choose with probability proportional to score.

Uses A-Res weighted reservoir sampling: each endpoint with score ``w > 0`` draws
``key = u ** (1 / w)`` for uniform ``u``; the largest keys win. Sampling without
replacement for ``maxNumOfEndpoints > 1`` falls out of the same keys. When no endpoint
has a positive score, the choice is uniform.
"""

from __future__ import annotations

from epp.framework.plugin import BasePlugin, Handle
from epp.framework.scheduling import CycleState, ProfileRunResult, ScoredEndpoint
from epp.plugins.pickers.params import PickerParams
from epp.requests.types import InferenceRequest

__all__ = ["WeightedRandomPicker"]


class WeightedRandomPicker(BasePlugin):
    """Picks endpoints at random, weighted by score (A-Res reservoir sampling)."""

    TYPE = "weighted-random-picker"
    PARAMS = PickerParams
    params: PickerParams

    def __init__(self, name: str, params: PickerParams | None, handle: Handle) -> None:
        super().__init__(name, params or PickerParams(), handle)
        self._rng = handle.rng

    def pick(self, cycle: CycleState, request: InferenceRequest, scored: list[ScoredEndpoint]) -> ProfileRunResult:
        n = min(self.params.max_num_of_endpoints, len(scored))
        weighted = [se for se in scored if se.score > 0]
        if not weighted:
            return ProfileRunResult([se.endpoint for se in self._rng.sample(scored, n)])
        rand = self._rng.random
        keyed = sorted(
            ((rand() ** (1.0 / se.score), i) for i, se in enumerate(weighted)), reverse=True
        )
        chosen = [weighted[i].endpoint for _, i in keyed[:n]]
        if len(chosen) < n:  # fill with zero-score endpoints, uniformly
            rest = [se for se in scored if se.score <= 0]
            chosen += [se.endpoint for se in self._rng.sample(rest, n - len(chosen))]
        return ProfileRunResult(chosen)
