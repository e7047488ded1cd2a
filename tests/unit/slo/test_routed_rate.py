"""``RoutedRate``: the recent rate of prompt tokens routed to each endpoint."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from epp.plugins.slo.routed_rate import RoutedRate


def test_an_endpoint_never_routed_to_reads_zero() -> None:
    assert RoutedRate().rate("a", 5.0) == 0.0


def test_a_steady_stream_reads_its_rate() -> None:
    rate = RoutedRate(window_s=2.0)
    # 1000 tokens every 0.1 s for 20 s (10 windows): 10,000 tokens/s.
    for i in range(200):
        rate.add("a", 1000.0, i * 0.1)
    assert rate.rate("a", 19.9) == pytest.approx(10_000.0, rel=0.06)
    assert rate.rate("b", 19.9) == 0.0


def test_the_rate_decays_by_e_every_window() -> None:
    rate = RoutedRate(window_s=2.0)
    rate.add("a", 600.0, 10.0)
    assert rate.rate("a", 10.0) == pytest.approx(300.0)
    assert rate.rate("a", 12.0) == pytest.approx(300.0 / math.e)
    assert rate.rate("a", 40.0) < 1e-2


def test_a_bad_window_is_refused() -> None:
    with pytest.raises(ValueError, match="window_s"):
        RoutedRate(window_s=0.0)


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 1e5), st.floats(0, 5)), max_size=50))
def test_the_rate_is_never_negative_and_never_exceeds_all_tokens_over_the_window(
        events: list[tuple[str, float, float]]) -> None:
    rate, now, total = RoutedRate(window_s=1.0), 0.0, 0.0
    for endpoint, tokens, gap in events:
        now += gap
        rate.add(endpoint, tokens, now)
        total += tokens
    for endpoint in "abc":
        assert 0.0 <= rate.rate(endpoint, now) <= total * (1 + 1e-9)
