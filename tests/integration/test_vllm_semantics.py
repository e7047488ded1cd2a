"""A model server that restarts loses its prefix cache; the picker must forget it too.

A real ``epp sim`` process is scraped by an in-process picker, gets a prefix recorded by a
routed request, is killed and started again on the same port; the next scrape sees a new
``process_start_time_seconds`` and the picker's prefix index no longer holds that endpoint.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from epp.devstack.processes import ManagedProcess, epp_command, free_port
from epp.plugins.prefix.producer import ApproxPrefixCacheProducer
from epp.server.app import PickerServer
from epp.sim.config import SimConfig
from epp.testing import ExtProcClient
from epp.testing.waiting import eventually

SIM_MODEL = SimConfig().model_name
SCRAPING_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
"""


class SimProcess:
    """``epp sim`` (a ``ManagedProcess``) on a fixed port, killed with SIGKILL like a crashed server."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.process: ManagedProcess | None = None

    async def start(self) -> None:
        self.process = ManagedProcess("sim", epp_command("sim", "--port", str(self.port), "--time-scale", "0.05"),
                                      self.workdir / "sim.log").start()

        async def healthy() -> bool:
            try:
                async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{self.port}/health") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        # Polled without blocking: the picker under test runs on this event loop.
        await eventually(healthy, timeout=20.0, what="the simulator answers /health", interval=0.1)

    async def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.signal(signal.SIGKILL)
            await asyncio.to_thread(self.process.stop)


@pytest.fixture
async def sim_process(tmp_path: Path) -> AsyncIterator[SimProcess]:
    sim = SimProcess(free_port(), tmp_path)
    await sim.start()
    yield sim
    await sim.kill()


def prefix_producer(picker: PickerServer) -> ApproxPrefixCacheProducer:
    assert picker.config is not None
    return next(p for p in picker.config.plugins.values() if isinstance(p, ApproxPrefixCacheProducer))


async def test_a_restarted_server_loses_its_prefix_entries_in_the_picker(
        start_picker: Any, sim_process: SimProcess) -> None:
    address = f"127.0.0.1:{sim_process.port}"
    picker = await start_picker(endpoints=address, config=SCRAPING_CONFIG)
    endpoint = picker.pool.endpoints()[0]
    await eventually(lambda: endpoint.metrics.process_start_time > 0, what="a first scrape")
    first_start = endpoint.metrics.process_start_time

    prompt = "You are a careful assistant. " * 80
    body = b'{"model": "m", "prompt": "%s", "max_tokens": 1}' % prompt.encode()
    async with ExtProcClient(f"127.0.0.1:{picker.grpc_port}") as envoy:
        assert (await envoy.exchange(body)).destination == address
    index = prefix_producer(picker).index
    assert index.statistics().entries > 0

    await sim_process.kill()
    await sim_process.start()
    await eventually(lambda: endpoint.metrics.process_start_time not in (0.0, first_start), timeout=10.0,
                     what="a scrape of the new process")
    assert index.statistics().entries == 0
    assert picker.pool.endpoints() == (endpoint,)  # the same member, still scraped
    scraped_at = endpoint.metrics.update_time
    await eventually(lambda: endpoint.metrics.update_time > scraped_at, what="scrapes go on after the restart")


async def test_the_servers_own_prefix_cache_hit_rate_is_shown_and_exported(
        start_picker: Any, sim_process: SimProcess) -> None:
    """vLLM leaves ``prompt_tokens_details`` out of usage by default; its counters still tell the hit rate."""
    address = f"127.0.0.1:{sim_process.port}"
    picker = await start_picker(endpoints=address, config=SCRAPING_CONFIG)
    endpoint = picker.pool.endpoints()[0]
    # The rate is over what the picker saw change; lookups before its first scrape are history.
    await eventually(lambda: endpoint.metrics.process_start_time > 0, what="a first scrape")
    prompt = "Summarise the following contract clause by clause. " * 40
    async with aiohttp.ClientSession() as http:
        for _ in range(3):  # the first request fills the cache, the next two hit it
            async with http.post(f"http://{address}/v1/completions",
                                 json={"model": SIM_MODEL, "prompt": prompt, "max_tokens": 1}) as answer:
                assert answer.status == 200

        rates: list[float] = []

        async def shown() -> bool:
            async with http.get(f"http://127.0.0.1:{picker.metrics_port}/debug/endpoints") as page:
                (endpoint,) = (await page.json())["endpoints"]
            rates.append(endpoint["metrics"]["prefixCacheHitRate"] or 0.0)
            return rates[-1] > 0

        await eventually(shown, what="a hit rate in /debug/endpoints")
        assert 0.5 < rates[-1] < 1.0  # two of three identical prompts were served from the cache
        async with http.get(f"http://127.0.0.1:{picker.metrics_port}/metrics") as page:
            exported = [line for line in (await page.text()).splitlines()
                        if line.startswith("epp_endpoint_prefix_cache_hit_ratio{")]
    assert exported and f'pod_name="{address}"' in exported[0]


FILTERED_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: metrics-data-source
  parameters: {path: /metrics/, filterSeries: true}
- type: core-metrics-extractor
- type: queue-scorer
dataLayer:
  sources:
  - pluginRef: metrics-data-source
    extractors:
    - pluginRef: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
"""


async def test_scraping_only_the_wanted_series_reads_the_same_values_from_a_page_a_twentieth_the_size(
        start_picker: Any, sim_process: SimProcess) -> None:
    """``filterSeries`` asks ``/metrics/`` for the series the extractors read, as vLLM's
    prometheus_client app serves them; the picker's view is the same as from the whole page."""
    address = f"127.0.0.1:{sim_process.port}"
    picker = await start_picker(endpoints=address, config=FILTERED_CONFIG)
    endpoint = picker.pool.endpoints()[0]
    await eventually(lambda: endpoint.metrics.process_start_time > 0 and endpoint.metrics.cache_num_blocks > 0,
                     what="a filtered scrape with the start time and cache info")
    assert endpoint.metrics.cache_block_size == SimConfig().block_size
    assert endpoint.metrics.prefix_cache_queries == 0
    source = next(p for p in picker.config.plugins.values() if p.typed_name.type == "metrics-data-source")
    url = source.url(endpoint)  # type: ignore[attr-defined]
    assert "name[]=vllm:num_requests_waiting" in url and "name[]=process_start_time_seconds" in url
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as filtered:
            small = await filtered.read()
        async with http.get(f"http://{address}/metrics") as whole:
            big = await whole.read()
    assert len(small) * 10 < len(big)
    assert b"vllm:num_requests_waiting{" in small and b"vllm:generation_tokens_total" not in small


STALENESS_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: utilization-detector
  parameters: {metricsStalenessThreshold: 2s}
- type: queue-scorer
saturationDetector:
  pluginRef: utilization-detector
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
"""


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param(None, 0.15, id="the default detector's 200 ms staleness caps the backoff below it"),
        pytest.param(STALENESS_CONFIG, 0.5, id="a 2 s staleness threshold leaves the 500 ms backoff alone"),
    ],
)
async def test_idle_endpoints_are_never_scraped_so_rarely_that_a_utilization_detector_calls_them_stale(
        start_picker: Any, config: str | None, expected: float) -> None:
    # A stale endpoint counts as saturated: idle replicas would look full and, with the
    # detector as a filter, never get the request that wakes them.
    picker = await start_picker(endpoints="127.0.0.1:9", config=config, idle_scrape_interval=0.5,
                                refresh_metrics_interval=0.05)
    assert picker.collector is not None
    assert picker.collector.idle_interval == pytest.approx(expected)
