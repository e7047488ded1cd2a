"""Both metrics sources against real servers: Debian's ``prometheus`` scraping in-process simulators.

The test starts Prometheus on a free loopback port with a temporary config that scrapes
two simulators every 200 ms, waits (bounded) until both targets are up, then checks that
what ``PrometheusSource`` returns matches the simulators' own ``/metrics``.
``PodScrapeSource`` reads the same simulators directly.

Without the ``prometheus`` binary the Prometheus tests are skipped, unless ``CI=true``,
where they fail.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from epp.autoscale.podscrape import PodScrapeSource
from epp.autoscale.prometheus import PrometheusSource
from epp.autoscale.queries import (
    FLOW_CONTROL_QUEUE_SIZE,
    KV_CACHE_USAGE,
    QUEUE_LENGTH,
    RUNNING_REQUESTS,
    pod_queries,
    prometheus_queries,
    query_params,
)
from epp.autoscale.sources import QueryResult
from epp.autoscale.templates import QueryList, QueryTemplate
from epp.datalayer.promtext import parse_series
from epp.sim import SimConfig, SimServer

FLOW_GAUGE = "inference_extension_flow_control_queue_size"
DEPTH_GAUGE = "epp_test_depth"
ENGINE_SERIES = {KV_CACHE_USAGE: "vllm:kv_cache_usage_perc", QUEUE_LENGTH: "vllm:num_requests_waiting",
                 RUNNING_REQUESTS: "vllm:num_requests_running"}
STARTUP_TIMEOUT = 12.0

# One Prometheus and one pair of simulators for the whole module: starting Prometheus takes seconds.
pytestmark = pytest.mark.asyncio(loop_scope="module")


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK)
                                           else None)
    if found is None:
        reason = "the prometheus binary is not installed (apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI=true requires it")
        pytest.skip(reason)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    sims: list[SimServer]
    prometheus_url: str

    @property
    def targets(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sims]


def make_sims() -> list[SimServer]:
    # Custom gauges give each simulator distinct, steady values; the flow-control gauge carries only
    # model_name (target_model_name absent), which exercises the query's fallback branch.
    return [SimServer(SimConfig(host="127.0.0.1", port=0, time_scale=0.05, seed=i,
                                custom_gauges=((DEPTH_GAUGE, 3.0 + i), (FLOW_GAUGE, 2.0 + i))))
            for i in range(2)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sims() -> AsyncIterator[list[SimServer]]:
    servers = make_sims()
    for server in servers:
        await server.start()
    yield servers
    for server in servers:
        await server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(sims: list[SimServer], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    binary = prometheus_binary()
    tmp_path = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    targets = ", ".join(f"'127.0.0.1:{s.port}'" for s in sims)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n"
        f"scrape_configs:\n- job_name: sims\n  static_configs:\n  - targets: [{targets}]\n")
    log = (tmp_path / "prometheus.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until_targets_are_up(url, len(sims), process, tmp_path / "prometheus.log")
        yield Stack(sims, url)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=5)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def wait_until_targets_are_up(url: str, count: int, process: asyncio.subprocess.Process, log: Path) -> None:
    """Bounded: ``STARTUP_TIMEOUT`` seconds, through the source under test itself."""
    up = QueryList([QueryTemplate("up", "promql", 'sum(up{job="{job}"})', ("job",))])
    deadline = time.monotonic() + STARTUP_TIMEOUT
    async with PrometheusSource(url, up, retries=0, timeout=1.0) as source:
        while True:
            if process.returncode is not None:
                raise AssertionError(f"prometheus exited with {process.returncode}: {log.read_text()[-2000:]}")
            result = (await source.refresh({"job": "sims"}))["up"]
            if result.ok and result.first() == count:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"targets not up after {STARTUP_TIMEOUT}s (last: {result}); "
                                     f"log: {log.read_text()[-2000:]}")
            await asyncio.sleep(0.1)


async def page(server: SimServer, names: list[str]) -> dict[str, float]:
    """The simulator's own values of ``names`` for its model."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{server.url}/metrics")).text
    found = parse_series(text, names)
    return {name: next(s.value for s in found[name] if s.labels.get("model_name") == server.config.model_name)
            for name in names}


async def refresh_until(source: PrometheusSource | PodScrapeSource, params: dict[str, str],
                        done: Callable[[dict[str, QueryResult]], bool]) -> dict[str, QueryResult]:
    """Refresh until ``done(results)`` holds; bounded by ``STARTUP_TIMEOUT``."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        results = await source.refresh(params)
        if done(results):
            return results
        if time.monotonic() > deadline:
            raise AssertionError(f"results never settled: {results}")
        await asyncio.sleep(0.1)


async def test_default_queries_through_prometheus_match_the_simulators(stack: Stack) -> None:
    model = stack.sims[0].config.model_name
    queries = prometheus_queries()
    async with PrometheusSource(stack.prometheus_url, queries) as source:
        results = await refresh_until(source, query_params(model, "1m"), lambda r: all(
            r[name].ok and len(r[name].values) == 2 for name in ENGINE_SERIES))
        for name, series in ENGINE_SERIES.items():
            expected = {target: (await page(sim, [series]))[series] for target, sim in zip(stack.targets, stack.sims,
                                                                                          strict=True)}
            assert results[name].by_replica() == expected, name
        flow = results[FLOW_CONTROL_QUEUE_SIZE]
        assert flow.ok and flow.first() == 2.0 + 3.0  # both simulators' gauges, summed
        assert source.get(KV_CACHE_USAGE, query_params(model, "1m")) is results[KV_CACHE_USAGE]


async def test_a_custom_gauge_through_prometheus_matches_each_simulator(stack: Stack) -> None:
    queries = QueryList([QueryTemplate("depth", "promql", f'{DEPTH_GAUGE}{{model_name="{{model}}"}}', ("model",))])
    async with PrometheusSource(stack.prometheus_url, queries) as source:
        result = (await source.refresh({"model": stack.sims[0].config.model_name}))["depth"]
    expected = {target: (await page(sim, [DEPTH_GAUGE]))[DEPTH_GAUGE]
                for target, sim in zip(stack.targets, stack.sims, strict=True)}
    assert expected == {stack.targets[0]: 3.0, stack.targets[1]: 4.0}
    assert result.by_replica() == expected
    assert all(v.labels["job"] == "sims" for v in result.values)


async def test_a_hostile_model_name_is_a_valid_query_that_matches_nothing(stack: Stack) -> None:
    async with PrometheusSource(stack.prometheus_url, prometheus_queries()) as source:
        results = await source.refresh(query_params('x"} or vector(1) #\n', "1m"))
    assert {name: (r.ok, r.values) for name, r in results.items()} == {name: (True, ()) for name in results}


async def test_a_bad_query_and_a_division_by_zero_through_prometheus(stack: Stack) -> None:
    queries = QueryList([QueryTemplate("broken", "promql", "sum by (pod) (", ()),
                         QueryTemplate("zero_by_zero", "promql", "vector(0) / vector(0)", ())])
    async with PrometheusSource(stack.prometheus_url, queries) as source:
        results = await source.refresh({})
    assert results["broken"].error is not None and results["broken"].error.startswith("HTTP 400, Prometheus bad_data:")
    assert source.get("broken", {}) is None
    assert math.isnan(results["zero_by_zero"].first())  # missing, not 0


async def test_an_unreachable_prometheus_is_an_error_after_retries() -> None:
    async with PrometheusSource(f"http://127.0.0.1:{free_port()}", prometheus_queries(), backoff=0.01) as source:
        result = (await source.refresh(query_params("m")))[KV_CACHE_USAGE]
    assert result.error is not None and "cannot connect to Prometheus" in result.error
    assert result.error.endswith("(after 3 attempts)")


async def test_pod_scrape_source_matches_the_simulators(sims: list[SimServer]) -> None:
    targets = [f"127.0.0.1:{s.port}" for s in sims]
    queries = pod_queries()
    queries.register(QueryTemplate("depth", "metric", f'{DEPTH_GAUGE}{{model_name="{{model}}"}}', ("model",)))
    async with PodScrapeSource(targets, queries, timeout=2.0) as source:
        results = await source.refresh({"model": sims[0].config.model_name})
    for name, series in {**ENGINE_SERIES, "depth": DEPTH_GAUGE}.items():
        expected = {target: (await page(sim, [series]))[series] for target, sim in zip(targets, sims, strict=True)}
        assert results[name].ok and results[name].warnings == ()
        assert results[name].by_replica() == expected, name
    assert results["depth"].by_replica() == {targets[0]: 3.0, targets[1]: 4.0}


async def test_pod_scrape_source_skips_a_stopped_simulator() -> None:
    sims = make_sims()
    for server in sims:
        await server.start()
    targets = [f"127.0.0.1:{s.port}" for s in sims]
    try:
        await sims[1].stop()
        async with PodScrapeSource(targets, pod_queries(), timeout=2.0) as source:
            result = (await source.refresh({"model": sims[0].config.model_name}))[QUEUE_LENGTH]
    finally:
        for server in sims:
            await server.stop()
    assert list(result.by_replica()) == [targets[0]]
    assert len(result.warnings) == 1 and result.warnings[0].startswith(f"{targets[1]}: ConnectError")
