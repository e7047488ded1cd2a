"""How fast this picker has recently been sending prompt tokens to each endpoint.

A request's TPOT is set mostly by what arrives *after* it was routed: every later prompt the
endpoint prefills stalls the decode steps of the requests already running there (the issue 9
benchmark measured TPOT correlating with the running batch and queue at decision time
between -0.35 and +0.23). The recent rate of prompt tokens routed to an endpoint is the best
estimate of that future load the picker has, and it is its own count: fresh at every request,
unlike scraped metrics. A decision that keeps sending requests to the same endpoint raises
that endpoint's rate, so the prediction sees the crowding it is causing.

The rate is an exponentially decayed sum: each routed request adds ``tokens / window`` and
the total decays by ``e`` every ``window`` seconds, so a steady stream of R tokens/s reads R.
"""

from __future__ import annotations

import math

__all__ = ["DEFAULT_WINDOW_S", "RoutedRate"]

DEFAULT_WINDOW_S = 2.0  # about the length of one streamed answer's decode on a loaded replica
_MAX_ENDPOINTS = 4096


class RoutedRate:
    """Per endpoint: prompt tokens per second this picker routed there, decayed over ``window_s``."""

    __slots__ = ("_levels", "_window")

    def __init__(self, window_s: float = DEFAULT_WINDOW_S) -> None:
        if not window_s > 0:
            raise ValueError("window_s must be > 0")
        self._window = float(window_s)
        self._levels: dict[str, tuple[float, float]] = {}  # endpoint -> (tokens/s, as of time)

    def add(self, endpoint: str, tokens: float, now: float) -> None:
        """Count ``tokens`` routed to ``endpoint`` at ``now`` (seconds, any monotonic clock)."""
        levels = self._levels
        current = self.rate(endpoint, now)
        levels.pop(endpoint, None)  # re-inserted last: the oldest-updated endpoint is evicted first
        levels[endpoint] = (current + max(0.0, tokens) / self._window, now)
        if len(levels) > _MAX_ENDPOINTS:
            del levels[next(iter(levels))]

    def rate(self, endpoint: str, now: float) -> float:
        """Tokens per second routed to ``endpoint`` recently (0 when none)."""
        level = self._levels.get(endpoint)
        if level is None:
            return 0.0
        value, since = level
        elapsed = now - since
        return value * math.exp(-elapsed / self._window) if elapsed > 0 else value
