"""Dispatch accounting: a routed request shows up in its endpoint's metrics before the next scrape."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from epp.datalayer.collector import Collector, SourceBinding
from epp.datalayer.dispatch import account_dispatch
from epp.datalayer.endpoint import Endpoint, EndpointMetadata, Metrics
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


def test_the_kv_estimate_uses_the_models_characters_per_token(make_endpoint: Any) -> None:
    ep = make_endpoint("a")
    ep.metrics = scraped(kv_cache_usage_percent=0.25)
    account_dispatch(ep, prompt_bytes=16_000, cached_tokens=1000, chars_per_token=2.0)  # 8000 tokens, 7000 new
    assert ep.metrics.kv_cache_usage_percent == pytest.approx(0.25 + 7000 / 16_000)


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


def test_estimates_stop_growing_when_pages_lack_the_queue_series(make_endpoint: Any) -> None:
    # They used to grow with every dispatch until a page carried a wanted series again.
    ep = make_endpoint("a")
    ep.metrics = scraped(waiting_queue_size=1)
    ep.dispatch_ttl = 1.0
    for i in range(40):  # 10 s of dispatches, four a second, and no page settles any
        account_dispatch(ep, prompt_bytes=400, now=i * 0.25)
    assert ep.metrics.waiting_queue_size == 1 + 5  # the ones of the last second only
    ep.expire_dispatches(now=39 * 0.25 + 0.5)
    assert ep.metrics.waiting_queue_size == 1 + 3
    ep.expire_dispatches(now=39 * 0.25 + 1.25)
    assert ep.metrics == ep.scraped_metrics  # nothing routed within a second: the scrape alone


def test_kv_estimates_expire_with_their_dispatches(make_endpoint: Any) -> None:
    ep = make_endpoint("a")
    ep.metrics = scraped(kv_cache_usage_percent=0.5)
    ep.dispatch_ttl = 1.0
    account_dispatch(ep, prompt_bytes=16_000, now=10.0)  # 4000 of 16000 tokens
    account_dispatch(ep, prompt_bytes=16_000, now=10.5)
    assert ep.metrics.kv_cache_usage_percent == 1.0
    ep.expire_dispatches(now=11.25)
    assert ep.metrics.kv_cache_usage_percent == pytest.approx(0.75)


QUEUE = "vllm:num_requests_waiting"


def page(waiting: int | None) -> ScrapedSeries:
    """A vLLM page; ``None``: a page without the queue series, or any other the extractor reads."""
    if waiting is None:
        return ScrapedSeries()
    return ScrapedSeries({QUEUE: [Sample({}, float(waiting))], "vllm:num_requests_running": [Sample({}, 0.0)],
                          "vllm:kv_cache_usage_perc": [Sample({}, 0.0)]})


class ScriptedSource:
    """Each fetch waits for the test to hand it its page, so the test decides what happens mid-fetch."""

    def __init__(self) -> None:
        self.pages: asyncio.Queue[ScrapedSeries] = asyncio.Queue()
        self.fetches = 0
        self.fetch_started = asyncio.Event()

    def output_type(self) -> type:
        return ScrapedSeries

    def bind_extractors(self, extractors: list[Any]) -> None:
        return None

    async def collect(self, endpoint: Endpoint) -> ScrapedSeries:
        self.fetches += 1
        self.fetch_started.set()
        return await self.pages.get()

    async def aclose(self) -> None:
        return None

    async def next_fetch(self) -> None:
        """Wait until the collector has applied the previous page and started the next fetch."""
        self.fetch_started.clear()
        await asyncio.wait_for(self.fetch_started.wait(), timeout=10)


async def scraping(source: ScriptedSource, ttl: float) -> tuple[Endpoint, asyncio.Task[None]]:
    pool = EndpointPool()
    pool.replace_all([EndpointMetadata("a", "127.0.0.1", 8000, 8000)])
    ep = pool.get("a")
    assert ep is not None
    ep.metrics = scraped(waiting_queue_size=1)
    extractor = CoreMetricsExtractor("core", None, Handle(pool=pool))
    collector = Collector(pool, [SourceBinding(source, (extractor,))], interval=0.001, timeout=30,
                          estimate_ttl=ttl)
    return ep, asyncio.create_task(collector.run())


async def test_a_page_fetched_before_a_dispatch_does_not_erase_its_estimate() -> None:
    source = ScriptedSource()
    ep, task = await scraping(source, ttl=60)
    try:
        account_dispatch(ep, prompt_bytes=400)  # before the fetch: the page will show it
        await asyncio.wait_for(source.fetch_started.wait(), timeout=10)
        account_dispatch(ep, prompt_bytes=400)  # while the page is on its way: it may not
        source.pages.put_nowait(page(waiting=2))
        await source.next_fetch()
        assert (ep.scraped_metrics.waiting_queue_size, ep.metrics.waiting_queue_size) == (2, 3)
        source.pages.put_nowait(page(waiting=3))  # fetched after both dispatches
        await source.next_fetch()
        assert (ep.scraped_metrics.waiting_queue_size, ep.metrics.waiting_queue_size) == (3, 3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_collector_expires_estimates_no_page_settles() -> None:
    source = ScriptedSource()
    ep, task = await scraping(source, ttl=60)
    try:
        await asyncio.wait_for(source.fetch_started.wait(), timeout=10)
        account_dispatch(ep, prompt_bytes=400, now=time.monotonic() - 120)  # long past the TTL, no other dispatch
        assert ep.metrics.waiting_queue_size == 1 + 1
        source.pages.put_nowait(page(waiting=None))  # nothing this extractor reads: no scrape applied
        await source.next_fetch()
        assert (ep.scraped_metrics.waiting_queue_size, ep.metrics.waiting_queue_size) == (1, 1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
