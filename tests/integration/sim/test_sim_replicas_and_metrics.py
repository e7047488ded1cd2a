"""Several replicas in one process, the `epp sim` process itself, and the live /metrics page."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import sys

import aiohttp
from sim_http_helpers import eventually, post_json, sample, scrape, stream

from epp.sim import EngineKind, SimConfig, serve_replicas

READY = re.compile(r"^epp-sim ready (http://[\d.]+:\d+) model=(\S+) engine=(vllm|sglang)$")


async def test_replicas_on_different_loopback_addresses_keep_separate_state(
        sim_server_factory, http: aiohttp.ClientSession) -> None:
    a = await sim_server_factory(host="127.0.0.1")
    b = await sim_server_factory(host="127.0.0.2")
    prompt = {"prompt": "shared context " * 100, "max_tokens": 2}
    for _ in range(2):
        await post_json(http, a.url + "/v1/completions", prompt)
    assert a.stats().prefix_hits > 0 and a.stats().requests_received == 2
    assert b.stats().requests_received == 0
    assert sample(await scrape(http, b.url), "vllm:prefix_cache_queries_total") == 0
    await post_json(http, b.url + "/v1/completions", prompt)
    assert b.stats().prefix_hits == 0  # b never saw the prefix


async def test_serve_replicas_prints_one_ready_line_each_and_stops_cleanly(
        http: aiohttp.ClientSession) -> None:
    out, stop = io.StringIO(), asyncio.Event()
    configs = [SimConfig(port=0, replica_index=i, time_scale=0.05) for i in range(3)]
    task = asyncio.create_task(serve_replicas(configs, out=out, stop=stop))

    async def ready() -> bool:
        return out.getvalue().count("\n") == 3

    await eventually(ready)
    urls = [READY.match(line).group(1) for line in out.getvalue().splitlines()]  # type: ignore[union-attr]
    assert len(set(urls)) == 3
    for url in urls:
        async with http.get(url + "/health") as response:
            assert response.status == 200
    stop.set()
    assert await task == 0


async def test_the_sim_command_serves_until_sigterm(http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "epp.sim", "--replicas", "2", "--port", "0", "--host", "127.0.0.3",
        "--engine", "sglang", "--time-scale", "0.1",
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    try:
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip() for _ in range(2)]
        matches = [READY.match(line) for line in lines]
        assert all(m and m.group(3) == "sglang" for m in matches)
        assert all(m and m.group(1).startswith("http://127.0.0.3:") for m in matches)
        url = matches[0].group(1)  # type: ignore[union-attr]
        events = await stream(http, url + "/v1/chat/completions",
                              {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert events[-1][1] == b"[DONE]"
        metrics = await scrape(http, url)
        assert sample(metrics, "sglang:num_running_reqs") == 0
        assert "sglang:cache_config_info" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_metrics_page_parses_and_is_realistically_large(sim_server_factory,
                                                              http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory()
    url = server.url
    for i in range(5):
        await post_json(http, url + "/v1/completions", {"prompt": f"request {i}", "max_tokens": 4})
        await stream(http, url + "/v1/chat/completions",
                     {"messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 4})
    async with http.get(url + "/sim/stats"):
        pass  # the simulator's own routes stay off the page
    async with http.get(url + "/metrics") as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        page = await response.read()
    assert 40_000 <= len(page) <= 60_000
    metrics = await scrape(http, url)
    assert sample(metrics, "vllm:time_to_first_token_seconds_count") == 10
    assert sample(metrics, "vllm:request_success_total", finished_reason="length") == 10
    assert sample(metrics, "vllm:generation_tokens_total") == 40
    assert sample(metrics, "http_requests_total", handler="/v1/completions", status="2xx") == 5
    assert sample(metrics, "vllm:num_requests_running") == 0
    handlers = {s.labels["handler"] for s in metrics["http_requests"].samples}
    assert handlers == {"/v1/completions", "/v1/chat/completions"}  # not /metrics, as in vLLM


async def test_sglang_engine_serves_sglang_names(sim_server_factory, http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory(engine=EngineKind.SGLANG)
    await post_json(http, server.url + "/v1/completions", {"prompt": "x " * 40, "max_tokens": 3})
    metrics = await scrape(http, server.url)
    assert sample(metrics, "sglang:num_queue_reqs") == 0
    assert sample(metrics, "sglang:generation_tokens_total") == 3
    assert sample(metrics, "sglang:time_to_first_token_seconds_count") == 1
    assert not any(name.startswith("vllm:") for name in metrics)
