"""The background collector against simulated vLLM servers (in-process, ephemeral ports)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from epp.datalayer.collector import Collector, SourceBinding
from epp.datalayer.dispatch import account_dispatch
from epp.datalayer.endpoint import Endpoint, EndpointMetadata
from epp.datalayer.pool import EndpointPool
from epp.framework.plugin import Handle
from epp.plugins.datalayer.core_metrics import CoreMetricsExtractor
from epp.plugins.datalayer.metrics_source import MetricsDataSource
from epp.server.app import PickerServer
from epp.sim import FaultMode, SimServer
from epp.testing.pages import MetricsPage
from epp.testing.waiting import eventually

PickerFactory = Callable[..., Awaitable[PickerServer]]

SCRAPING_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: kv-cache-utilization-scorer
"""


async def scraping_picker(start_picker: PickerFactory, sims: list[SimServer]) -> PickerServer:
    endpoints = ",".join(f"127.0.0.1:{s.port}" for s in sims)
    return await start_picker(endpoints=endpoints, config=SCRAPING_CONFIG, refresh_metrics_interval=0.02,
                              scrape_timeout=0.3)


async def test_scrapes_hydrate_endpoint_metrics(start_picker: PickerFactory, sims: list[SimServer]) -> None:
    server = await scraping_picker(start_picker, sims)
    first = server.pool.endpoints()[0]
    await eventually(lambda: first.metrics.update_time > 0)
    assert first.metrics.cache_block_size == 16
    assert first.metrics.cache_num_blocks == sims[0].config.num_gpu_blocks
    assert first.metrics.waiting_queue_size == 0


async def test_load_on_a_server_shows_up_as_queue_and_running(start_picker: PickerFactory,
                                                               sims: list[SimServer]) -> None:
    server = await scraping_picker(start_picker, sims)
    busy = server.pool.endpoints()[0]
    body = {"model": sims[0].config.model, "prompt": "tell me a long story", "max_tokens": 400}
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(session.post(f"{sims[0].url}/v1/completions", json=body)) for _ in range(5)]
        await eventually(lambda: busy.metrics.running_requests_size == 2 and busy.metrics.waiting_queue_size == 3)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_server_that_stops_answering_keeps_old_metrics_and_becomes_unready(
        start_picker: PickerFactory, sims: list[SimServer]) -> None:
    server = await scraping_picker(start_picker, sims)
    victim = server.pool.endpoints()[1]
    await eventually(lambda: victim.metrics.update_time > 0)
    await sims[1].set_fault(FaultMode.DOWN)
    await eventually(lambda: not victim.ready)
    frozen = victim.metrics.update_time
    assert [ep.name for ep in server.pool.ready_endpoints()] == [server.pool.endpoints()[0].name]
    def failures() -> int:
        return {h.name: h for h in server.collector.health()}[victim.name].consecutive_failures  # type: ignore[union-attr]

    more_failures = failures() + 3
    await eventually(lambda: failures() >= more_failures)  # three more scrapes were tried and failed
    assert victim.metrics.update_time == frozen  # failed scrapes never touch the values
    await sims[1].set_fault(FaultMode.OK)
    await eventually(lambda: victim.ready)
    assert victim.metrics.update_time > frozen


async def test_a_hung_server_times_out_and_becomes_unready(start_picker: PickerFactory,
                                                           sims: list[SimServer]) -> None:
    server = await scraping_picker(start_picker, sims)
    victim = server.pool.endpoints()[0]
    await eventually(lambda: victim.metrics.update_time > 0)
    await sims[0].set_fault(FaultMode.HANG)
    await eventually(lambda: not victim.ready, timeout=5)
    await sims[0].set_fault(FaultMode.OK)
    await eventually(lambda: victim.ready, timeout=5)


async def test_admin_metrics_use_the_go_epp_names(start_picker: PickerFactory, sims: list[SimServer]) -> None:
    server = await scraping_picker(start_picker, sims)
    await eventually(lambda: all(ep.metrics.update_time > 0 for ep in server.pool.endpoints()))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{server.metrics_port}/metrics") as response:
            text = await response.text()
        async with session.get(f"http://127.0.0.1:{server.metrics_port}/debug/endpoints") as response:
            endpoints = await response.json()
    assert 'inference_pool_ready_pods{name="default"} 2.0' in text
    assert "inference_pool_average_kv_cache_utilization" in text
    assert "inference_pool_per_pod_queue_size" in text
    assert "inference_extension_info" in text
    assert [e["metrics"]["cacheBlockSize"] for e in endpoints["endpoints"]] == [16, 16]


class ScrapeCounter(MetricsPage):
    """A loopback /metrics endpoint that counts the GETs it receives (the simulator does not count scrapes)."""

    def __init__(self) -> None:
        super().__init__("# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\"} 0\n")


async def test_removed_endpoint_stops_being_scraped(start_picker: PickerFactory) -> None:
    counters = [ScrapeCounter(), ScrapeCounter()]
    for counter in counters:
        await counter.start()
    try:
        kept, removed = counters
        server = await start_picker(endpoints=",".join(f"127.0.0.1:{c.port}" for c in counters),
                                    config=SCRAPING_CONFIG, refresh_metrics_interval=0.02, scrape_timeout=0.3)
        await eventually(lambda: kept.scrapes > 0 and removed.scrapes > 0)
        server.pool.replace_all([ep.metadata for ep in server.pool.endpoints() if ep.metadata.port == kept.port])
        # A scrape already on the wire may still land; a few ticks of the kept endpoint later, none can.
        settled = kept.scrapes + 3
        await eventually(lambda: kept.scrapes >= settled)
        scrapes_after_removal = removed.scrapes
        later = kept.scrapes + 10
        await eventually(lambda: kept.scrapes >= later)  # ten more ticks have passed
        assert removed.scrapes == scrapes_after_removal
    finally:
        for counter in counters:
            await counter.stop()


def vllm_page(waiting: int, running: int = 0) -> str:
    return "\n".join((
        "# TYPE vllm:num_requests_waiting gauge", f'vllm:num_requests_waiting{{model_name="m"}} {waiting}',
        "# TYPE vllm:num_requests_running gauge", f'vllm:num_requests_running{{model_name="m"}} {running}',
        "# TYPE vllm:kv_cache_usage_perc gauge", 'vllm:kv_cache_usage_perc{model_name="m"} 0.0', ""))


class SwitchablePage(MetricsPage):
    """A vLLM page that answers 500 once ``failing`` is set."""

    failing = False

    def render(self) -> str | web.Response:
        return web.Response(status=500, text="down") if self.failing else self.page


@asynccontextmanager
async def collecting(pages: list[MetricsPage], idle_interval: float | None, interval: float = 0.01,
                     unready_after: int = 3, estimate_ttl: float | None = None,
                     ) -> AsyncIterator[tuple[Collector, tuple[Endpoint, ...]]]:
    """A collector scraping ``pages`` (one endpoint each, in order) until the block ends."""
    for page in pages:
        await page.start()
    pool = EndpointPool()
    pool.replace_all([EndpointMetadata(f"e{i}", "127.0.0.1", page.port, page.port) for i, page in enumerate(pages)])
    handle = Handle(pool=pool)
    extractor = CoreMetricsExtractor("core", None, handle)
    source = MetricsDataSource("metrics", None, handle)
    source.bind_extractors([extractor])
    collector = Collector(pool, [SourceBinding(source, (extractor,))], interval=interval, timeout=1.0,
                          unready_after=unready_after, idle_interval=idle_interval, estimate_ttl=estimate_ttl)
    task = asyncio.create_task(collector.run())
    try:
        yield collector, pool.endpoints()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await source.aclose()
        for page in pages:
            await page.stop()


def scraped_once(collector: Collector, name: str) -> bool:
    return any(h.name == name and h.last_success > 0 for h in collector.health())


async def test_an_idle_endpoint_waits_the_idle_interval_while_a_busy_one_is_scraped_every_interval() -> None:
    idle, busy = MetricsPage(vllm_page(0)), MetricsPage(vllm_page(2, running=1))
    async with collecting([idle, busy], idle_interval=60) as (collector, _):
        await eventually(lambda: busy.scrapes >= 20)
        assert idle.scrapes == 1
        assert [h.scrape_interval for h in collector.health()] == [60, 0.01]


async def test_without_an_idle_interval_idle_endpoints_are_scraped_every_interval() -> None:
    idle, busy = MetricsPage(vllm_page(0)), MetricsPage(vllm_page(2))
    async with collecting([idle, busy], idle_interval=None):
        await eventually(lambda: idle.scrapes >= 20 and busy.scrapes >= 20)


async def test_a_dispatch_to_an_idle_endpoint_gets_it_scraped_at_once_then_it_rests_again() -> None:
    idle, clock = MetricsPage(vllm_page(0)), MetricsPage(vllm_page(1))
    async with collecting([idle, clock], idle_interval=60) as (collector, (endpoint, _)):
        await eventually(lambda: scraped_once(collector, endpoint.name))
        assert collector.is_idle(endpoint)
        account_dispatch(endpoint, prompt_bytes=400)
        assert not collector.is_idle(endpoint)  # counted as waiting until a page shows it
        await eventually(lambda: idle.scrapes == 2, timeout=10)
        await eventually(lambda: endpoint.metrics.waiting_queue_size == 0)  # a page fetched after it settled it
        ticks = clock.scrapes + 20
        await eventually(lambda: clock.scrapes >= ticks)
        assert idle.scrapes == 2


async def test_load_seen_on_an_idle_scrape_ends_the_backoff() -> None:
    target, clock = MetricsPage(vllm_page(0)), MetricsPage(vllm_page(1))
    async with collecting([target, clock], idle_interval=0.2) as (collector, (endpoint, _)):
        await eventually(lambda: scraped_once(collector, endpoint.name))
        target.page = vllm_page(3, running=2)  # someone else's requests: only a scrape can show them
        await eventually(lambda: endpoint.metrics.waiting_queue_size == 3)
        assert not collector.is_idle(endpoint)
        # Scraped as often as the busy reference now: ten of its ticks bring at least five of ours
        # (at the idle interval they would bring one).
        target_before, ticks = target.scrapes, clock.scrapes + 10
        await eventually(lambda: clock.scrapes >= ticks)
        assert target.scrapes - target_before >= 5


async def test_a_failing_idle_endpoint_is_scraped_every_interval_and_soon_unready() -> None:
    victim, clock = SwitchablePage(vllm_page(0)), MetricsPage(vllm_page(1))
    # The dispatch estimate expires with the first failed tick: only the failure keeps the pace up.
    async with collecting([victim, clock], idle_interval=60, unready_after=3, estimate_ttl=0.0) as (
            collector, (endpoint, _)):
        await eventually(lambda: scraped_once(collector, endpoint.name))
        victim.failing = True
        account_dispatch(endpoint, prompt_bytes=400)  # a request sent there wakes the scrape, which fails
        await eventually(lambda: not endpoint.ready, timeout=10)  # three failed ticks, not three idle intervals
        assert endpoint.metrics.waiting_queue_size == 0
        assert not collector.is_idle(endpoint)


async def test_an_idle_endpoint_counts_as_fresh_for_its_idle_interval() -> None:
    async with collecting([MetricsPage(vllm_page(0))], idle_interval=1.0, interval=0.05) as (collector, endpoints):
        await eventually(lambda: scraped_once(collector, endpoints[0].name))
        assert (collector.freshness_bound, collector.idle_freshness_bound) == (2.0, 4.0)  # max(3 x interval + 1 s, 2 s)
        last = collector.health()[0].last_success
        assert collector.has_fresh_data(now=last + 3.9)
        assert not collector.has_fresh_data(now=last + 4.1)


async def test_a_busy_endpoint_counts_as_fresh_for_the_normal_bound_only() -> None:
    async with collecting([MetricsPage(vllm_page(1))], idle_interval=1.0, interval=0.05) as (collector, endpoints):
        await eventually(lambda: scraped_once(collector, endpoints[0].name))
        last = collector.health()[0].last_success
        assert collector.has_fresh_data(now=last + 1.9)
        assert not collector.has_fresh_data(now=last + 2.1)
