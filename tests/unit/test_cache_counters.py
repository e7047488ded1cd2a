"""``HitRateWindow``: the prefix-cache hit rate over the last seconds, from lifetime counters."""

from __future__ import annotations

import pytest

from epp.datalayer.cache_counters import HitRateWindow, prefix_cache_view
from epp.datalayer.endpoint import Metrics


def test_the_rate_covers_only_the_window() -> None:
    window = HitRateWindow(window=30.0, resolution=1.0)
    window.observe(0.0, 0, 0)
    window.observe(10.0, 100, 100)  # all hits
    assert window.hit_rate == 1.0
    window.observe(35.0, 100, 200)  # then 100 misses
    assert window.hit_rate == pytest.approx(0.5)  # the window [5, 35] starts from the point at t=0
    window.observe(40.0, 100, 200)
    assert window.hit_rate == 0.0  # the window [10, 40] holds only the misses


def test_points_closer_than_the_resolution_are_not_kept_but_the_newest_value_counts() -> None:
    window = HitRateWindow(window=30.0, resolution=1.0)
    window.observe(0.0, 0, 0)
    for i in range(1, 100):
        window.observe(i * 0.05, i, 2 * i)
    assert window.hit_rate == pytest.approx(0.5)
    assert len(window) <= 6


def test_a_reset_counts_the_new_values_as_the_increase() -> None:
    window = HitRateWindow()
    assert window.observe(0.0, 900, 1000) is False
    assert window.observe(1.0, 950, 1100) is False
    assert window.observe(2.0, 10, 40) is True
    assert window.hit_rate == pytest.approx(0.25)
    assert window.observe(3.0, 40, 80) is False
    assert window.hit_rate == pytest.approx(0.5)


def test_no_queries_no_rate() -> None:
    window = HitRateWindow()
    assert window.hit_rate is None
    window.observe(0.0, 5, 5)
    window.observe(1.0, 5, 5)
    assert window.hit_rate is None


def test_the_debug_view() -> None:
    view = prefix_cache_view(Metrics(prefix_cache_hits=5, prefix_cache_queries=8, prefix_cache_hit_rate=0.123456))
    assert view == {"prefixCacheHitRate": 0.1235, "prefixCacheHits": 5, "prefixCacheQueries": 8}
