"""``max-score-picker``: the highest total score wins; ties are broken at random.

Endpoints are shuffled, then stably sorted by score (descending), and the first
``maxNumOfEndpoints`` are returned, so equal scores never favour pool order.
"""

from __future__ import annotations

from epp.framework.plugin import BasePlugin, Handle
from epp.framework.scheduling import CycleState, ProfileRunResult, ScoredEndpoint
from epp.plugins.pickers.params import PickerParams
from epp.requests.types import InferenceRequest

__all__ = ["MaxScorePicker"]


class MaxScorePicker(BasePlugin):
    """Picks the highest-scoring endpoints, breaking ties at random."""

    TYPE = "max-score-picker"
    PARAMS = PickerParams
    params: PickerParams

    def __init__(self, name: str, params: PickerParams | None, handle: Handle) -> None:
        super().__init__(name, params or PickerParams(), handle)
        self._rng = handle.rng

    def pick(self, cycle: CycleState, request: InferenceRequest, scored: list[ScoredEndpoint]) -> ProfileRunResult:
        n = self.params.max_num_of_endpoints
        if n == 1 and scored:
            best = max(se.score for se in scored)
            top = [se for se in scored if se.score == best]
            chosen = top[0] if len(top) == 1 else top[self._rng.randrange(len(top))]
            return ProfileRunResult([chosen.endpoint])
        ordered = list(scored)
        self._rng.shuffle(ordered)
        ordered.sort(key=lambda se: se.score, reverse=True)
        return ProfileRunResult([se.endpoint for se in ordered[:n]])
