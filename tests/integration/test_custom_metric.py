"""A custom gauge scraped by ``prometheus-metric`` and scored by ``metric-scorer`` steers routing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from epp.server.app import PickerServer
from epp.testing.envoy_stream import routed_to
from epp.testing.pages import MetricsPage
from epp.testing.waiting import eventually

PickerFactory = Callable[..., Awaitable[PickerServer]]

CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: metrics-data-source
- type: core-metrics-extractor
- name: backlog
  type: prometheus-metric
  parameters: {metricName: custom_backlog, labels: {pool: main}}
- name: by-backlog
  type: metric-scorer
  parameters: {metricName: custom_backlog}
- type: max-score-picker
dataLayer:
  sources:
  - pluginRef: metrics-data-source
    extractors:
    - pluginRef: core-metrics-extractor
    - pluginRef: backlog
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: by-backlog
  - pluginRef: max-score-picker
"""


class GaugePage(MetricsPage):
    """A loopback /metrics page with vLLM's core series and a settable custom gauge."""

    def __init__(self, backlog: float) -> None:
        super().__init__()
        self.backlog = backlog

    def render(self) -> str:
        return ('vllm:num_requests_waiting{model_name="m"} 0\nvllm:num_requests_running{model_name="m"} 0\n'
                'vllm:kv_cache_usage_perc{model_name="m"} 0.1\n'
                f'custom_backlog{{pool="main"}} {self.backlog}\ncustom_backlog{{pool="shadow"}} 0\n')


@pytest.fixture
async def pages() -> AsyncIterator[list[GaugePage]]:
    servers = [GaugePage(backlog=40.0), GaugePage(backlog=5.0)]
    for server in servers:
        await server.start()
    yield servers
    for server in servers:
        await server.stop()


async def until_scraped(server: PickerServer, expected: dict[str, float]) -> None:
    def seen() -> dict[str, float]:
        return {ep.name: ep.custom["custom_backlog"].value for ep in server.pool.endpoints()
                if "custom_backlog" in ep.custom}
    await eventually(lambda: seen() == expected, what=f"custom gauge scraped as {expected}")


async def route(server: PickerServer) -> str | None:
    return await routed_to(f"127.0.0.1:{server.grpc_port}")


async def test_requests_follow_the_lower_custom_gauge(start_picker: PickerFactory, pages: list[GaugePage]) -> None:
    high, low = pages
    names = [f"127.0.0.1:{p.port}" for p in pages]
    server = await start_picker(endpoints=",".join(names), config=CONFIG, refresh_metrics_interval=0.02,
                                scrape_timeout=0.5)
    await until_scraped(server, {names[0]: 40.0, names[1]: 5.0})
    assert {await route(server) for _ in range(5)} == {names[1]}

    async with (aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{server.metrics_port}/debug/endpoints") as response):
        view = await response.json()
    custom = {e["name"]: e["custom"] for e in view["endpoints"]}
    assert custom[names[0]]["custom_backlog"]["value"] == 40.0
    assert custom[names[1]]["custom_backlog"]["ageSeconds"] >= 0

    # The gauges swap: routing follows the next scrapes.
    high.backlog, low.backlog = 1.0, 90.0
    await until_scraped(server, {names[0]: 1.0, names[1]: 90.0})
    assert {await route(server) for _ in range(5)} == {names[0]}
