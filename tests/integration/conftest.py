"""In-process picker servers on ephemeral ports, and an ext_proc client that plays Envoy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from epp.server.app import PickerServer, ServeOptions
from epp.sim.config import SimConfig
from epp.sim.faults import FaultMode
from epp.sim.server import SimServer
from epp.testing import ExtProcClient

# Scoring without scrapes: protocol tests need no model servers behind the addresses.
NO_SCRAPE_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: prefix-cache-scorer
dataLayer:
  sources: []
"""

THREE_ENDPOINTS = "10.0.0.1:8000,10.0.0.2:8000,10.0.0.3:8000"

PickerFactory = Callable[..., Awaitable[PickerServer]]


@pytest.fixture
async def start_picker() -> AsyncIterator[PickerFactory]:
    servers: list[PickerServer] = []

    async def start(endpoints: str | None = THREE_ENDPOINTS, config: str | None = NO_SCRAPE_CONFIG,
                    **options: Any) -> PickerServer:
        options.setdefault("seed", 7)
        opts = ServeOptions(grpc_port=0, grpc_health_port=0, metrics_port=0, endpoints=endpoints,
                            config_text=config, **options)
        server = PickerServer(opts)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(grace=0)


@pytest.fixture
async def picker(start_picker: PickerFactory) -> PickerServer:
    return await start_picker()


@pytest.fixture
async def envoy(picker: PickerServer) -> AsyncIterator[ExtProcClient]:
    async with ExtProcClient(f"127.0.0.1:{picker.grpc_port}") as client:
        yield client


@pytest.fixture
async def sims() -> AsyncIterator[list[SimServer]]:
    """Two fast simulated vLLM servers on ephemeral ports (2 sequences each, 20x time)."""
    servers = [SimServer(SimConfig(port=0, max_num_seqs=2, time_scale=0.05, seed=i)) for i in range(2)]
    for server in servers:
        await server.start()
    yield servers
    for server in servers:
        await server.set_fault(FaultMode.OK)  # release hung requests so stop() does not wait on them
        await server.stop()
