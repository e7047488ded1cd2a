"""Recipes served for real: a picker started with a recipe routes a request to a simulator (ext_proc, as Envoy)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import orjson
import pytest

from epp.ops.recipe import Query, build_recipe
from epp.server.app import PickerServer
from epp.sim import SimConfig, SimServer
from epp.sim.config import EngineKind
from epp.testing import ExtProcClient

PickerFactory = Callable[..., Awaitable[PickerServer]]

CASES = [
    # (query, simulated engine, wait for scraped metrics, request headers)
    (Query("vllm", "h100", "latency", slo=True, flow_control=True), EngineKind.VLLM, True,
     {"x-slo-ttft-ms": "5000", "x-slo-tpot-ms": "1000"}),
    (Query("sglang", "l4", "prefix-heavy"), EngineKind.SGLANG, True, {}),
    (Query("vllm", "h200", "lora", flow_control=True), EngineKind.VLLM, True, {}),
    (Query("vllm", None, "throughput", slo=True), EngineKind.VLLM, True, {}),
    # No trtllm-serve simulator: the recipe must still load, start and route.
    (Query("trtllm", "a100", "lora"), EngineKind.VLLM, False, {}),
]


async def until(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(("query", "engine", "scrapes", "headers"), CASES, ids=[c[0].describe() for c in CASES])
async def test_a_picker_started_with_the_recipe_routes_to_a_simulator(
        start_picker: PickerFactory, query: Query, engine: EngineKind, scrapes: bool,
        headers: dict[str, str]) -> None:
    sims = [SimServer(SimConfig(port=0, time_scale=0.05, seed=i, engine=engine)) for i in range(2)]
    for sim in sims:
        await sim.start()
    try:
        addresses = {f"127.0.0.1:{s.port}" for s in sims}
        picker = await start_picker(endpoints=",".join(sorted(addresses)), config=build_recipe(query).to_yaml(True),
                                    refresh_metrics_interval=0.02, scrape_timeout=0.5)
        if scrapes:
            # The recipe's engine reads this simulator's metric names.
            await until(lambda: all(ep.metrics.update_time > 0 and ep.ready for ep in picker.pool.endpoints()),
                        "scraped metrics")
        body = orjson.dumps({"model": sims[0].config.model, "prompt": "hello there", "max_tokens": 4})
        async with ExtProcClient(f"127.0.0.1:{picker.grpc_port}") as client:
            result = await client.exchange(body, headers=headers)
        assert result.immediate is None
        assert result.destination in addresses
    finally:
        for sim in sims:
            await sim.stop()
