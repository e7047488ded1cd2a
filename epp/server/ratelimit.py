"""A token bucket: ``rate`` tokens a second, holding at most ``burst``; one token per request.

The clock is injected (seconds, monotonic) so tests step time instead of sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RateDecision", "TokenBucket"]


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    # Whole tokens left after this request (what ``X-RateLimit-Remaining`` reports).
    remaining: int
    # Seconds until one token is available (0 when allowed): ``Retry-After`` rounds it up.
    retry_after: float
    # Seconds until the bucket is full again: ``X-RateLimit-Reset`` is now plus this.
    until_full: float


class TokenBucket:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a positive number of requests per second, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        # A clock that steps back (an injected one, say) must not drain the bucket.
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._updated = now

    def acquire(self) -> RateDecision:
        """Take one token if there is one."""
        self._refill()
        allowed = self._tokens >= 1.0
        if allowed:
            self._tokens -= 1.0
        retry_after = 0.0 if allowed else (1.0 - self._tokens) / self.rate
        until_full = (self.burst - self._tokens) / self.rate
        return RateDecision(allowed, math.floor(self._tokens), retry_after, until_full)
