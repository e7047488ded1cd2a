"""A model server's prefix-cache hit rate over the last seconds, from its lifetime counters.

vLLM counts prompt tokens looked up in its prefix cache (``vllm:prefix_cache_queries_total``)
and found there (``vllm:prefix_cache_hits_total``) since the process started. The picker
scrapes them every interval; the hit rate that matters for routing is the recent one, so
this keeps the counters' increase over a sliding window (30 s by default) and divides.

Counter resets (a restarted server starts again from 0) are handled as Prometheus's
``increase()`` does: a value below the previous one counts as an increase from 0, and the
window restarts so the old process's traffic no longer weighs in.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from epp.datalayer.endpoint import Metrics

__all__ = ["HitRateWindow", "prefix_cache_view"]


class HitRateWindow:
    """Increase of (hits, queries) over the last ``window`` seconds.

    Points are kept at least ``resolution`` seconds apart (a 50 ms scrape interval would
    otherwise keep 600 per endpoint); the newest observation is always used as the end.
    Concurrency: event-loop owned, no locks.
    """

    __slots__ = ("window", "resolution", "_points", "_last_raw", "_hits", "_queries", "_end")

    def __init__(self, window: float = 30.0, resolution: float = 1.0) -> None:
        self.window = window
        self.resolution = resolution
        # (time, cumulative hits, cumulative queries), summed over resets; oldest first.
        self._points: deque[tuple[float, float, float]] = deque()
        self._last_raw: tuple[float, float] | None = None
        self._hits = 0.0
        self._queries = 0.0
        self._end: tuple[float, float, float] | None = None

    def observe(self, now: float, hits: float, queries: float) -> bool:
        """Record the counters as scraped at ``now``; True when they went backwards (a reset)."""
        reset = False
        if self._last_raw is None:
            pass  # the first observation only sets the baseline
        elif hits < self._last_raw[0] or queries < self._last_raw[1]:
            reset = True
            self._points.clear()
            self._end = None
            # What the new process counted since it started is all recent traffic.
            self._hits, self._queries = hits, queries
            self._points.append((now, 0.0, 0.0))
        else:
            self._hits += hits - self._last_raw[0]
            self._queries += queries - self._last_raw[1]
        self._last_raw = (hits, queries)
        point = (now, self._hits, self._queries)
        if not self._points or now - self._points[-1][0] >= self.resolution:
            self._points.append(point)
        self._end = point
        # Keep one point at or before the window's start, so the window is fully covered.
        while len(self._points) > 1 and self._points[1][0] <= now - self.window:
            self._points.popleft()
        return reset

    def __len__(self) -> int:
        """Points kept (bounded by window / resolution + 2, whatever the scrape interval)."""
        return len(self._points)

    def clear(self) -> None:
        """Forget everything (the server restarted: its old counters mean nothing now)."""
        self._points.clear()
        self._last_raw = None
        self._end = None
        self._hits = self._queries = 0.0

    @property
    def hit_rate(self) -> float | None:
        """Hits / queries over the window; None when no prompt token was looked up in it."""
        if self._end is None or not self._points:
            return None
        _, start_hits, start_queries = self._points[0]
        queries = self._end[2] - start_queries
        if queries <= 0:
            return None
        return min(1.0, max(0.0, (self._end[1] - start_hits) / queries))


def prefix_cache_view(metrics: Metrics) -> dict[str, float | None]:
    """The ``/debug/endpoints`` fields of one endpoint's ``Metrics``."""
    rate = metrics.prefix_cache_hit_rate
    return {
        "prefixCacheHitRate": None if rate is None else round(rate, 4),
        "prefixCacheHits": metrics.prefix_cache_hits,
        "prefixCacheQueries": metrics.prefix_cache_queries,
    }
