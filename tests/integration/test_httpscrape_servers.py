"""The metrics source's keep-alive client against real HTTP servers (aiohttp's web server and
the project's simulator): the same series as aiohttp's client gives, over one connection."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from epp.datalayer.endpoint import Endpoint, EndpointMetadata
from epp.datalayer.pool import EndpointPool
from epp.framework.plugin import Handle
from epp.plugins.datalayer.core_metrics import CoreMetricsExtractor
from epp.plugins.datalayer.metrics_source import MetricsDataSource, MetricsSourceParams, ScrapedSeries, ScrapeError
from epp.sim import SimServer
from epp.sim.config import SimConfig
from epp.testing.waiting import eventually

PAGE = ("# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name=\"m\"} 2\n"
        "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\"} 5\n"
        "# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\n")


class PageServer:
    """aiohttp's web server answering the page plainly, chunked, with Connection: close, or 404."""

    def __init__(self) -> None:
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._plain)
        app.router.add_get("/chunked", self._chunked)
        app.router.add_get("/close", self._close)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    @property
    def open_connections(self) -> int:
        assert self._runner is not None and self._runner.server is not None
        return len(self._runner.server.connections)

    async def _plain(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE)

    async def _chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for line in PAGE.splitlines(keepends=True):
            await response.write(line.encode())
        await response.write_eof()
        return response

    async def _close(self, request: web.Request) -> web.Response:
        response = web.Response(text=PAGE)
        response.force_close()
        return response

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
async def page_server() -> AsyncIterator[PageServer]:
    server = PageServer()
    await server.start()
    yield server
    await server.stop()


def source_for(port: int, **params: object) -> tuple[MetricsDataSource, Endpoint, CoreMetricsExtractor]:
    handle = Handle(pool=EndpointPool())
    extractor = CoreMetricsExtractor("core", None, handle)
    source = MetricsDataSource("metrics", MetricsSourceParams(**params), handle)  # type: ignore[arg-type]
    source.bind_extractors([extractor])
    return source, Endpoint(EndpointMetadata("e", "127.0.0.1", port, port)), extractor


async def scrape_with(client: str, port: int, times: int = 1, **params: object) -> list[ScrapedSeries]:
    source, endpoint, _ = source_for(port, client=client, **params)
    try:
        return [await source.collect(endpoint) for _ in range(times)]
    finally:
        await source.aclose()


@pytest.mark.parametrize("path", ["/metrics", "/chunked", "/close"])
async def test_the_native_client_reads_what_aiohttp_reads(page_server: PageServer, path: str) -> None:
    native = await scrape_with("native", page_server.port, times=3, path=path)
    reference = await scrape_with("aiohttp", page_server.port, path=path)
    assert native == reference * 3
    assert native[0]["vllm:num_requests_waiting"][0].value == 5
    await eventually(lambda: page_server.open_connections == 0, what="every connection closed")


async def test_scrapes_reuse_one_connection_until_the_source_is_closed(page_server: PageServer) -> None:
    source, endpoint, _ = source_for(page_server.port)
    for _ in range(5):
        await source.collect(endpoint)
    assert page_server.open_connections == 1
    await source.aclose()
    await eventually(lambda: page_server.open_connections == 0, what="the kept-alive connection closed")


async def test_a_404_is_a_scrape_error_naming_the_status(page_server: PageServer) -> None:
    source, endpoint, _ = source_for(page_server.port, path="/nowhere")
    with pytest.raises(ScrapeError, match=f"GET http://127.0.0.1:{page_server.port}/nowhere: HTTP 404"):
        await source.collect(endpoint)
    await source.aclose()
    await eventually(lambda: page_server.open_connections == 0, what="every connection closed")


async def test_a_server_restarted_between_scrapes_is_scraped_again(page_server: PageServer) -> None:
    source, endpoint, _ = source_for(page_server.port)
    try:
        await source.collect(endpoint)
        await page_server.stop()  # closes the kept-alive connection from the server's side
        with pytest.raises(ScrapeError):
            await source.collect(endpoint)
        await page_server.start(port=page_server.port)
        assert (await source.collect(endpoint))["vllm:num_requests_running"][0].value == 2
        assert page_server.open_connections == 1
    finally:
        await source.aclose()
    await eventually(lambda: page_server.open_connections == 0, what="every connection closed")


@pytest.mark.parametrize("filter_series", [False, True])
async def test_the_simulator_page_gives_the_same_series_and_metrics_with_either_client(filter_series: bool) -> None:
    sim = SimServer(SimConfig(port=0, seed=3))
    await sim.start()
    try:
        path = "/metrics/" if filter_series else "/metrics"
        native = await scrape_with("native", sim.port, times=2, path=path, filter_series=filter_series)
        reference = await scrape_with("aiohttp", sim.port, path=path, filter_series=filter_series)
        assert native[0] == native[1] == reference[0]
        source, endpoint, extractor = source_for(sim.port, path=path, filter_series=filter_series)
        extractor.extract(await source.collect(endpoint), endpoint)
        await source.aclose()
        assert endpoint.metrics.cache_num_blocks == sim.config.num_gpu_blocks
        assert endpoint.metrics.update_time > 0
    finally:
        await sim.stop()
