"""Score normalisation shared by the load scorers."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["inverse_min_max"]


def inverse_min_max(values: Sequence[float]) -> list[float]:
    """Lowest value scores 1.0, highest 0.0, linear between; all equal → all 1.0."""
    if not values:
        return []
    low, high = min(values), max(values)
    if high == low:
        return [1.0] * len(values)
    span = high - low
    return [(high - v) / span for v in values]
