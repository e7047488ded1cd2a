"""``epp autoscale`` as a process, against simulated vLLM servers on loopback ports."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from epp.sim import SimServer
from epp.testing.waiting import eventually as wait_for_condition

MODEL = "meta-llama/Llama-3.1-8B-Instruct"




def endpoints(sims: list[SimServer]) -> str:
    return ",".join(f"127.0.0.1:{s.port}" for s in sims)


async def autoscale(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "epp.autoscale.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# The autoscaler's analysis interval and scrapes: allow more than the helper's default 5 s.
eventually = functools.partial(wait_for_condition, timeout=10.0)


async def waiting_on(session: aiohttp.ClientSession, sim: SimServer) -> float:
    async with session.get(f"{sim.url}/metrics") as response:
        page = await response.text()
    match = re.search(r'^vllm:num_requests_waiting\{[^}]*\} (\S+)$', page, re.M)
    return float(match.group(1)) if match else 0.0


async def test_once_on_idle_servers_recommends_one_fewer(sims: list[SimServer]) -> None:
    code, out, _ = await autoscale("--endpoints", endpoints(sims), "--model", MODEL, "--once",
                                   "--namespace", "prod", "--accelerator-type", "H100")
    assert code == 0
    (rec,) = json.loads(out)["models"]
    assert (rec["variantName"], rec["namespace"], rec["acceleratorType"]) == (MODEL, "prod", "H100")
    assert rec["analysis"]["currentReplicas"] == 2
    assert rec["analysis"]["direction"] == "down"
    assert rec["desiredReplicas"] == 1


async def test_once_on_saturated_servers_recommends_one_more(sims: list[SimServer]) -> None:
    body = {"model": MODEL, "prompt": "tell me a long story", "max_tokens": 4000}
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(session.post(f"{s.url}/v1/completions", json=body))
                 for s in sims for _ in range(8)]
        try:
            async def both_queued() -> bool:
                return all([await waiting_on(session, s) >= 5 for s in sims])
            await eventually(both_queued)
            code, out, _ = await autoscale("--endpoints", endpoints(sims), "--model", MODEL, "--once")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert code == 0
    (rec,) = json.loads(out)["models"]
    assert rec["analysis"]["saturatedReplicas"] == 2
    assert rec["analysis"]["direction"] == "up"
    assert rec["desiredReplicas"] == 3


@pytest.fixture
async def picker_page() -> AsyncIterator[tuple[str, list[str]]]:
    """A stand-in for the picker's admin /metrics: the page text is the list's last item."""
    page = ["# no flow control yet\n"]

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=page[-1], content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/metrics", page
    await runner.cleanup()


async def test_requests_queued_in_the_picker_count_as_demand(sims: list[SimServer],
                                                             picker_page: tuple[str, list[str]]) -> None:
    url, page = picker_page
    args = ("--endpoints", endpoints(sims), "--model", MODEL, "--picker-metrics", url, "--once")
    code, out, _ = await autoscale(*args)
    assert json.loads(out)["models"][0]["desiredReplicas"] == 1
    page.append("".join(
        f'inference_extension_flow_control_queue_size{{fairness_id="f",priority="{p}",inference_pool="pool",'
        f'model_name="{MODEL}",target_model_name="{MODEL}"}} 6\n' for p in (0, 1)))
    code, out, _ = await autoscale(*args)
    (rec,) = json.loads(out)["models"]
    assert code == 0
    assert rec["analysis"]["flowControlQueue"] == 12
    assert rec["desiredReplicas"] == 3


async def test_once_without_reachable_servers_is_stale_and_exits_1() -> None:
    code, out, err = await autoscale("--endpoints", "127.0.0.1:9", "--model", MODEL, "--once",
                                     "--scrape-timeout", "500ms")
    assert code == 1
    (rec,) = json.loads(out)["models"]
    assert rec["stale"] is True
    assert rec["desiredReplicas"] is None
    assert "wva_recommendation_stale=1" in err


async def test_bad_overrides_file_is_a_usage_error(tmp_path: Any) -> None:
    bad = tmp_path / "o.yaml"
    bad.write_text("models: [{modelID: x, kvCacheThreshold: 3}]\n")
    code, _, err = await autoscale("--endpoints", "127.0.0.1:9", "--model", MODEL, "--once", "--overrides", str(bad))
    assert code == 2
    assert "models[0].kvCacheThreshold" in err


async def test_the_metrics_page_serves_the_recommendation(sims: list[SimServer]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "epp.autoscale.cli", "--endpoints", endpoints(sims), "--model", MODEL,
        "--interval", "200ms", "--metrics-port", "0", "--namespace", "prod", "--accelerator-type", "H100",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        line = ""
        for _ in range(50):
            line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
            if "serving /metrics" in line or not line:
                break
        match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        assert match, line
        url = f"http://127.0.0.1:{match.group(1)}"
        labels = f'accelerator_type="H100",namespace="prod",variant_name="{MODEL}"'
        async with aiohttp.ClientSession() as session:
            async def published() -> bool:
                async with session.get(f"{url}/metrics") as response:
                    return f"wva_desired_replicas{{{labels}}} 1.0" in await response.text()
            await eventually(published)
            async with session.get(f"{url}/metrics") as response:
                text = await response.text()
            async with session.get(f"{url}/debug/autoscale") as response:
                debug = await response.json()
        assert f"wva_current_replicas{{{labels}}} 2.0" in text
        assert f"wva_desired_ratio{{{labels}}} 0.5" in text
        assert f"wva_recommendation_stale{{{labels}}} 0.0" in text
        # published 2 (what runs) until three analyses in a row allowed 1: one change, down
        assert (f'wva_replica_scaling_total{{direction="down",namespace="prod",reason="load_fits",'
                f'variant_name="{MODEL}"}} 1.0') in text
        assert debug["models"][MODEL]["desiredReplicas"] == 1
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0
