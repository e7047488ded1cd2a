"""``random-picker``: uniform choice, ignoring scores (a round-robin-like baseline)."""

from __future__ import annotations

from epp.framework.plugin import BasePlugin, Handle
from epp.framework.scheduling import CycleState, ProfileRunResult, ScoredEndpoint
from epp.plugins.pickers.params import PickerParams
from epp.requests.types import InferenceRequest

__all__ = ["RandomPicker"]


class RandomPicker(BasePlugin):
    """Picks endpoints uniformly at random."""

    TYPE = "random-picker"
    PARAMS = PickerParams
    params: PickerParams

    def __init__(self, name: str, params: PickerParams | None, handle: Handle) -> None:
        super().__init__(name, params or PickerParams(), handle)
        self._rng = handle.rng

    def pick(self, cycle: CycleState, request: InferenceRequest, scored: list[ScoredEndpoint]) -> ProfileRunResult:
        n = min(self.params.max_num_of_endpoints, len(scored))
        return ProfileRunResult([se.endpoint for se in self._rng.sample(scored, n)])
