"""A deterministic clock for tests of code that stamps update times."""

from __future__ import annotations

__all__ = ["TickingClock"]


class TickingClock:
    """Returns 100.0, 101.0, ... so each update time is distinct and known."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start - 1.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now
