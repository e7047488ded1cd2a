"""Parameters shared by every picker."""

from __future__ import annotations

from dataclasses import dataclass

from epp.framework.params import require

__all__ = ["PickerParams"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PickerParams:
    """``maxNumOfEndpoints``: how many endpoints to return, at least 1. Envoy is sent the
    first in ``x-gateway-destination-endpoint``; the whole list, primary first, goes in the
    ``envoy.lb`` metadata for gateways that fall back along it."""

    max_num_of_endpoints: int = 1

    def __post_init__(self) -> None:
        require(self.max_num_of_endpoints >= 1, "max_num_of_endpoints", "must be at least 1", self.max_num_of_endpoints)
