"""Dispatch accounting: a routed request shows up in its endpoint's metrics before the next scrape."""

from __future__ import annotations

from typing import Any

import pytest

from epp.datalayer.dispatch import account_dispatch
from epp.datalayer.endpoint import Metrics
from epp.datalayer.pool import EndpointPool
from epp.datalayer.promtext import Sample
from epp.framework.plugin import Handle
from epp.plugins.datalayer.core_metrics import CoreMetricsExtractor, ExtractionError
from epp.plugins.datalayer.metrics_source import ScrapedSeries


def scraped(**fields: Any) -> Metrics:
    return Metrics(cache_block_size=16, cache_num_blocks=1000, update_time=5.0, **fields)


def test_a_dispatch_adds_a_waiting_request_and_its_uncached_kv(make_endpoint: Any) -> None:
    ep = make_endpoint("a")
    ep.metrics = scraped(running_requests_size=2, waiting_queue_size=1, kv_cache_usage_percent=0.25)
    account_dispatch(ep, prompt_bytes=16_000, cached_tokens=1000)
    assert (ep.metrics.running_requests_size, ep.metrics.waiting_queue_size) == (2, 2)
    assert ep.metrics.kv_cache_usage_percent == pytest.approx(0.25 + 3000 / 16_000)
    assert ep.metrics.update_time == 5.0  # still the old scrape, adjusted


def test_kv_usage_never_exceeds_one(make_endpoint: Any) -> None:
    ep = make_endpoint("a")
    ep.metrics = scraped(kv_cache_usage_percent=0.9)
    account_dispatch(ep, prompt_bytes=10_000_000)
    assert ep.metrics.kv_cache_usage_percent == 1.0


def test_an_endpoint_never_scraped_is_left_alone(make_endpoint: Any) -> None:
    ep = make_endpoint("a")
    before = ep.metrics
    account_dispatch(ep, prompt_bytes=4000)
    assert ep.metrics is before


def test_without_cache_size_only_the_queue_moves(make_endpoint: Any) -> None:
    ep = make_endpoint("a")
    ep.metrics = Metrics(kv_cache_usage_percent=0.5, update_time=1.0)
    account_dispatch(ep, prompt_bytes=4000)
    assert (ep.metrics.waiting_queue_size, ep.metrics.kv_cache_usage_percent) == (1, 0.5)


def test_a_scrape_replaces_the_estimate_even_without_a_queue_series(make_endpoint: Any) -> None:

    ep = make_endpoint("a")
    ep.metrics = scraped(waiting_queue_size=1)
    for _ in range(20):
        account_dispatch(ep, prompt_bytes=400)
    assert ep.metrics.waiting_queue_size == 21
    extractor = CoreMetricsExtractor("x", None, Handle(pool=EndpointPool()))
    page = ScrapedSeries({"vllm:num_requests_running": [Sample({}, 3.0)],
                          "vllm:kv_cache_usage_perc": [Sample({}, 0.1)]})
    with pytest.raises(ExtractionError):  # the waiting series is missing
        extractor.extract(page, ep)
    assert (ep.metrics.waiting_queue_size, ep.metrics.running_requests_size) == (1, 3)  # the estimate is gone


def test_the_dispatch_accounting_plugin_counts_the_routed_primary_less_its_cached_prefix(
        make_endpoint: Any, make_request: Any, routed: Any) -> None:
    from epp.framework.attributes import PREFIX_MATCH_KEY, PrefixMatch
    from epp.framework.scheduling import CycleState
    from epp.plugins.dispatch.accounting import DispatchAccounting

    primary, other = make_endpoint("a"), make_endpoint("b")
    for ep in (primary, other):
        ep.metrics = scraped(kv_cache_usage_percent=0.0)
    cycle = CycleState()
    cycle[PREFIX_MATCH_KEY] = PrefixMatch(total_blocks=250, block_size_tokens=16, matches={"a": 100})
    request = make_request(b"x" * 16_000)
    DispatchAccounting().pre_request(cycle, request, routed(primary, other))
    assert (primary.metrics.waiting_queue_size, other.metrics.waiting_queue_size) == (1, 0)
    assert primary.metrics.kv_cache_usage_percent == pytest.approx((4000 - 1600) / 16_000)
