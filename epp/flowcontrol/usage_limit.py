"""``static-usage-limit-policy``: one saturation ceiling for every priority band.

A band dispatches while the pool's saturation is below ``threshold``; 1.0 (the default)
means "until the detector reports the pool full", lower values keep headroom free.
Parameter: ``threshold`` (1.0; finite, > 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from epp.framework.params import require
from epp.framework.plugin import BasePlugin, Handle

__all__ = ["StaticUsageLimitParams", "StaticUsageLimitPolicy"]


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

    def ceiling(self, priority: int, saturation: float) -> float:
        return self.params.threshold
