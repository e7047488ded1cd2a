"""In-process simulated servers on ephemeral ports and small HTTP helpers for the sim tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from epp.sim import SimConfig, SimServer

# Fast defaults for functional tests: a simulated step of 6 ms takes 0.3 ms of wall time.
FAST = {"time_scale": 0.05}

ServerFactory = Callable[..., Awaitable[SimServer]]


@pytest.fixture
async def sim_server_factory() -> AsyncIterator[ServerFactory]:
    """Start ``SimServer(SimConfig(port=0, **overrides))``; every server is stopped afterwards."""
    servers: list[SimServer] = []

    async def make(**overrides: Any) -> SimServer:
        server = SimServer(SimConfig(**{"port": 0, **FAST, **overrides}))
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
