"""Usage-limit policies: the saturation ceiling below which a priority band may dispatch.

- ``static-usage-limit-policy`` (the Go EPP's default): one ceiling, ``threshold`` (1.0;
  finite, > 0), for every band. 1.0 means "until the detector reports the pool full".
- ``priority-holdback-policy`` (llm-d's type and parameters): lower bands get lower
  ceilings, so as the pool fills, low-priority traffic stops first and room stays free
  for higher priorities. With one ceiling for all, a high-priority request that leaves the
  queue still waits behind the low-priority requests already on the model server; holding
  low priorities back keeps that server-side queue short. ``minCeiling`` (required, in
  [0, 1)) is the lowest band's ceiling, ``maxCeiling`` (1.0, in (0, 1]) the highest's;
  ``strategy`` places the others: ``stepwise-spread`` in equal steps by rank
  (c_i = max − i·(max − min)/(N − 1), i = 0 for the highest), ``linear-proportional`` by
  the numeric priority within the range of priorities present. A single band gets
  ``maxCeiling``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from epp.framework.params import require
from epp.framework.plugin import BasePlugin, Handle

__all__ = ["PriorityHoldbackParams", "PriorityHoldbackPolicy", "StaticUsageLimitParams", "StaticUsageLimitPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticUsageLimitParams:
    threshold: float = 1.0

    def __post_init__(self) -> None:
        require(math.isfinite(self.threshold) and self.threshold > 0, "threshold", "must be finite and > 0",
                self.threshold)


class StaticUsageLimitPolicy(BasePlugin):
    """The same ceiling for every band, whatever the current saturation."""

    TYPE = "static-usage-limit-policy"
    PARAMS = StaticUsageLimitParams
    params: StaticUsageLimitParams

    def __init__(self, name: str, params: StaticUsageLimitParams | None, handle: Handle) -> None:
        super().__init__(name, params or StaticUsageLimitParams(), handle)

    def ceiling(self, priority: int, saturation: float, priorities: Sequence[int] = ()) -> float:
        return self.params.threshold


_STRATEGIES = ("stepwise-spread", "linear-proportional")


@dataclass(frozen=True, slots=True, kw_only=True)
class PriorityHoldbackParams:
    strategy: str
    min_ceiling: float
    max_ceiling: float = 1.0

    def __post_init__(self) -> None:
        require(self.strategy in _STRATEGIES, "strategy", f"must be one of {', '.join(_STRATEGIES)}", self.strategy)
        require(math.isfinite(self.min_ceiling) and 0.0 <= self.min_ceiling < 1.0, "minCeiling",
                "must be in [0, 1)", self.min_ceiling)
        require(math.isfinite(self.max_ceiling) and 0.0 < self.max_ceiling <= 1.0, "maxCeiling",
                "must be in (0, 1]", self.max_ceiling)
        require(self.min_ceiling <= self.max_ceiling, "minCeiling", "must not exceed maxCeiling", self.min_ceiling)


class PriorityHoldbackPolicy(BasePlugin):
    """Lower priorities stop dispatching at lower saturation, keeping headroom for higher ones."""

    TYPE = "priority-holdback-policy"
    PARAMS = PriorityHoldbackParams
    params: PriorityHoldbackParams

    def __init__(self, name: str, params: PriorityHoldbackParams, handle: Handle) -> None:
        super().__init__(name, params, handle)

    def ceiling(self, priority: int, saturation: float, priorities: Sequence[int] = ()) -> float:
        low, high = self.params.min_ceiling, self.params.max_ceiling
        present = sorted({*priorities, priority}, reverse=True)
        if len(present) == 1:
            return high
        if self.params.strategy == "stepwise-spread":
            return high - present.index(priority) * (high - low) / (len(present) - 1)
        top, bottom = present[0], present[-1]
        return low + (priority - bottom) / (top - bottom) * (high - low)
