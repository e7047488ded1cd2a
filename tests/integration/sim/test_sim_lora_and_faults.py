"""LoRA adapters (load, unload, waiting for a GPU slot) and the /sim fault modes."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from sim_http_helpers import eventually, post_json, scrape, stream

from epp.sim import FaultMode, LoraModule


async def lora_labels(http: aiohttp.ClientSession, url: str) -> dict[str, str] | None:
    """Labels of the newest ``vllm:lora_requests_info`` series (None before the engine's first step)."""
    family = (await scrape(http, url))["vllm:lora_requests_info"]
    return max(family.samples, key=lambda s: s.value).labels if family.samples else None


async def test_load_use_and_unload_an_adapter(sim_server_factory, http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory(max_loras=2)
    url = server.url
    load = url + "/v1/load_lora_adapter"
    async with http.post(load, json={"lora_name": "sql", "lora_path": "/a/sql"}) as r:
        assert r.status == 200 and "added successfully" in await r.text()
    status, error = await post_json(http, load, {"lora_name": "sql", "lora_path": "/x"})
    assert status == 400 and error["error"]["type"] == "BadRequestError"
    async with http.get(url + "/v1/models") as r:
        cards = {m["id"]: m for m in (await r.json())["data"]}
    assert cards["sql"]["parent"] == server.config.model_name and cards["sql"]["root"] == "/a/sql"

    status, body = await post_json(http, url + "/v1/completions", {"model": "sql", "prompt": "SELECT",
                                                                 "max_tokens": 3})
    assert status == 200 and body["model"] == "sql"
    async with http.post(url + "/v1/unload_lora_adapter", json={"lora_name": "sql"}) as r:
        assert r.status == 200 and "removed successfully" in await r.text()
    status, error = await post_json(http, url + "/v1/completions", {"model": "sql", "prompt": "SELECT"})
    assert status == 404 and error["error"]["type"] == "NotFoundError"
    status, _ = await post_json(http, url + "/v1/unload_lora_adapter", {"lora_name": "sql"})
    assert status == 404


async def test_a_request_waits_while_its_adapter_loads(sim_server_factory,
                                                       http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory(time_scale=1.0, lora_modules=(LoraModule("chat", "/a/chat"),),
                                      lora_load_time=0.3)
    url = server.url
    assert await lora_labels(http, url) is None  # no engine step yet: the family has no sample
    body = {"model": "chat", "prompt": "hi", "max_tokens": 60}
    first = asyncio.create_task(stream(http, url + "/v1/completions", body))

    async def listed() -> bool:
        # vLLM 0.32 lists an adapter with any request, running or waiting, in both labels.
        labels = await lora_labels(http, url)
        return labels is not None and labels["running_lora_adapters"] == labels["waiting_lora_adapters"] == "chat"

    await eventually(listed)
    events = await first
    assert events[0][0] >= 0.3  # the first token came after the load
    loaded = await stream(http, url + "/v1/completions", {**body, "max_tokens": 2})
    assert loaded[0][0] < 0.15  # the adapter is resident now
    labels = await lora_labels(http, url)
    assert labels is not None and labels["max_lora"] == "1" and labels["running_lora_adapters"] == ""
    assert labels["waiting_lora_adapters"] == ""


async def test_fault_error_answers_inference_with_500_only(sim_server_factory,
                                                           http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory()
    status, body = await post_json(http, server.url + "/sim/fault", {"mode": "error"})
    assert status == 200 and body == {"mode": "error"}
    status, body = await post_json(http, server.url + "/v1/completions", {"prompt": "x"})
    assert status == 500 and body["error"]["type"] == "InternalServerError"
    async with http.get(server.url + "/health") as response:
        assert response.status == 200
    await post_json(http, server.url + "/sim/fault", {"mode": "ok"})
    status, _ = await post_json(http, server.url + "/v1/completions", {"prompt": "x", "max_tokens": 1})
    assert status == 200
    async with http.get(server.url + "/sim/stats") as response:
        assert (await response.json())["requests_failed"] == 1


async def test_fault_hang_holds_requests_until_ok(sim_server_factory, http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory()
    await post_json(http, server.url + "/sim/fault", {"mode": "hang"})
    body = {"prompt": "x", "max_tokens": 2}
    pending = asyncio.create_task(post_json(http, server.url + "/v1/completions", body))
    metrics = asyncio.create_task(scrape(http, server.url))
    for _ in range(500):  # until both are parked: proof they reached the server and are held
        async with http.get(server.url + "/sim/fault") as response:
            state = await response.json()
        if state["parked"] == 2:
            break
        await asyncio.sleep(0.01)
    assert state == {"mode": "hang", "parked": 2}
    assert not pending.done() and not metrics.done()
    await post_json(http, server.url + "/sim/fault", {"mode": "ok"})
    status, _ = await pending
    assert status == 200
    await metrics


async def test_fault_down_refuses_connections_and_ok_listens_again(sim_server_factory,
                                                                   http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory()
    url = server.url
    status, body = await post_json(http, url + "/sim/fault", {"mode": "down"})
    assert status == 200 and body == {"mode": "down"}

    async def refused() -> bool:
        try:
            async with aiohttp.ClientSession() as fresh, fresh.get(url + "/health"):
                return False
        except aiohttp.ClientConnectorError:
            return True

    await eventually(refused, timeout=5)
    await server.set_fault(FaultMode.OK)  # in-process revival on the same address
    assert server.url == url
    async with http.get(url + "/health") as response:
        assert response.status == 200


async def test_bad_fault_mode_is_rejected(sim_server_factory, http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory()
    status, body = await post_json(http, server.url + "/sim/fault", {"mode": "explode"})
    assert status == 400 and "mode must be one of" in body["error"]["message"]


@pytest.mark.parametrize(("rate", "expected"), [(1.0, 500), (0.0, 200)], ids=["always fails", "never fails"])
async def test_fail_rate_injects_500s(sim_server_factory, http: aiohttp.ClientSession, rate: float,
                                      expected: int) -> None:
    server = await sim_server_factory(fail_rate=rate)
    statuses = {(await post_json(http, server.url + "/v1/completions", {"prompt": "x", "max_tokens": 1}))[0]
                for _ in range(5)}
    assert statuses == {expected}


async def test_metrics_delay_slows_scrapes(sim_server_factory, http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory(metrics_delay=0.2)
    start = time.perf_counter()
    await scrape(http, server.url)
    assert time.perf_counter() - start >= 0.2
