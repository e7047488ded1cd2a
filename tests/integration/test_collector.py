"""The background collector against simulated vLLM servers (in-process, ephemeral ports)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp

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
