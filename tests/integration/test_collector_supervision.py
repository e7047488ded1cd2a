"""Supervised background work and what it shows: scrape-error counts, a hung endpoint that
stalls nobody else, and readiness that falls when no endpoint has fresh data (a killed
collector, a dead fleet) and comes back when data flows again. Loopback servers only."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import aiohttp
import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.datalayer.collector import freshness_bound
from epp.server.app import BackgroundTasks, PickerServer, ServeOptions
from epp.server.health import EXT_PROC_SERVICE
from epp.sim import FaultMode, SimServer
from epp.testing.pages import MetricsPage
from epp.testing.waiting import eventually as wait_for_condition

PickerFactory = Callable[..., Awaitable[PickerServer]]

SCRAPING_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
"""

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING




# Scrapes and restarts here take longer than the helper's default 5 s.
eventually = functools.partial(wait_for_condition, timeout=10.0)


class FailingPage(MetricsPage):
    """A loopback /metrics that answers 500 every time."""

    def render(self) -> str | web.Response:
        return web.Response(status=500, text="engine exploded\n")


async def health_status(server: PickerServer, service: str = EXT_PROC_SERVICE) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_health_port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return int(reply.status)


async def readyz(server: PickerServer) -> int:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{server.metrics_port}/readyz") as response:
        return response.status


async def admin_metrics(server: PickerServer) -> str:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{server.metrics_port}/metrics") as response:
        return await response.text()


def counter_value(text: str, pod: str) -> float:
    prefix = f'epp_endpoint_scrape_errors_total{{pod_name="{pod}"}} '
    values = [float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)]
    return values[0] if values else 0.0


async def test_scrape_errors_are_counted_per_endpoint(start_picker: PickerFactory, sims: list[SimServer]) -> None:
    failing = FailingPage()
    await failing.start()
    try:
        server = await start_picker(endpoints=f"127.0.0.1:{sims[0].port},127.0.0.1:{failing.port}",
                                    config=SCRAPING_CONFIG, refresh_metrics_interval=0.02, scrape_timeout=0.3)
        good, bad = server.pool.endpoints()
        await eventually(lambda: good.metrics.update_time > 0 and not bad.ready)  # three failed ticks at least
        text = await admin_metrics(server)
        assert counter_value(text, bad.name) >= 3
        assert f'epp_endpoint_scrape_errors_total{{pod_name="{good.name}"}}' not in text
        errors = {h.name: h for h in server.collector.health()}[bad.name].last_error  # type: ignore[union-attr]
        assert "HTTP 500" in errors
        # Each further failure adds to the count.
        before = counter_value(text, bad.name)
        await eventually(lambda: _more(server, bad.name, before + 2))
    finally:
        await failing.stop()


async def _more(server: PickerServer, pod: str, at_least: float) -> bool:
    return counter_value(await admin_metrics(server), pod) >= at_least


async def test_a_hung_endpoint_does_not_stall_the_others(start_picker: PickerFactory, sims: list[SimServer]) -> None:
    await sims[1].set_fault(FaultMode.HANG)
    # A timeout far longer than the test: the hung scrape stays on the wire the whole time.
    server = await start_picker(endpoints=",".join(f"127.0.0.1:{s.port}" for s in sims), config=SCRAPING_CONFIG,
                                refresh_metrics_interval=0.02, scrape_timeout=30)
    good, hung = server.pool.endpoints()
    seen: set[float] = set()

    def ticked() -> bool:
        seen.add(good.metrics.update_time)
        return len(seen - {0.0}) >= 20

    await eventually(ticked)  # twenty fresh pages from the good endpoint ...
    assert hung.metrics.update_time == 0.0  # ... while the hung one's first scrape is still waiting
    health = {h.name: h for h in server.collector.health()}  # type: ignore[union-attr]
    assert health[hung.name].last_success == 0.0 and health[hung.name].consecutive_failures == 0
    assert await health_status(server) == SERVING  # one endpoint with fresh data is enough


async def test_readiness_falls_while_every_endpoint_is_dead_and_returns_with_one(
        start_picker: PickerFactory, sims: list[SimServer]) -> None:
    server = await start_picker(endpoints=",".join(f"127.0.0.1:{s.port}" for s in sims), config=SCRAPING_CONFIG,
                                refresh_metrics_interval=0.02, scrape_timeout=0.3)
    await eventually(lambda: _status_is(server, SERVING))
    assert await readyz(server) == 200
    for sim in sims:
        await sim.set_fault(FaultMode.DOWN)
    # Envoy then answers by itself rather than asking a picker that would route on frozen numbers.
    await eventually(lambda: _status_is(server, NOT_SERVING))
    assert await readyz(server) == 503
    assert await health_status(server, "liveness") == SERVING
    await sims[0].set_fault(FaultMode.OK)
    await eventually(lambda: _status_is(server, SERVING))
    assert await readyz(server) == 200


async def test_without_scraping_readiness_does_not_depend_on_data(start_picker: PickerFactory) -> None:
    server = await start_picker()  # dataLayer: {sources: []}, addresses nobody listens on
    assert await health_status(server) == SERVING
    assert await readyz(server) == 200


async def _status_is(server: PickerServer, status: int) -> bool:
    return await health_status(server) == status


async def test_a_killed_collector_is_restarted_and_readiness_follows(
        sims: list[SimServer], caplog: pytest.LogCaptureFixture) -> None:
    interval, timeout = 0.02, 0.3
    server = PickerServer(ServeOptions(grpc_port=0, grpc_health_port=0, metrics_port=0, seed=1,
                                       endpoints=",".join(f"127.0.0.1:{s.port}" for s in sims),
                                       config_text=SCRAPING_CONFIG, refresh_metrics_interval=interval,
                                       scrape_timeout=timeout))
    # Restart later than data goes stale, so the gap is visible to readiness.
    server.tasks = BackgroundTasks(restart_delay=freshness_bound(interval, timeout) + 1)
    await server.start()
    try:
        endpoint = server.pool.endpoints()[0]
        await eventually(lambda: _status_is(server, SERVING))
        killed = server.tasks.current("collector")
        assert killed is not None
        with caplog.at_level(logging.ERROR, logger="epp"):
            killed.cancel()
            await eventually(lambda: _status_is(server, NOT_SERVING))
        assert await readyz(server) == 503
        frozen = endpoint.metrics.update_time
        assert server.tasks.crashes["collector"] == 1
        assert any("background task collector was cancelled" in r.getMessage() for r in caplog.records)
        await eventually(lambda: _status_is(server, SERVING))  # the supervisor brought it back
        assert await readyz(server) == 200
        assert server.tasks.current("collector") not in (None, killed)
        # Readiness needs one fresh endpoint; this one is scraped again within a tick or two.
        await eventually(lambda: endpoint.metrics.update_time > frozen)
    finally:
        await server.stop(grace=0)
