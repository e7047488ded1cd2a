"""Engine behaviour seen from outside: prefix hits, queueing, KV usage, preemption, speed."""

from __future__ import annotations

import asyncio
import math
import time

import aiohttp
from sim_http_helpers import eventually, post_json, sample, scrape, stream

from epp.sim import FaultMode


async def ttft(http: aiohttp.ClientSession, url: str, prompt: str) -> float:
    events = await stream(http, url + "/v1/completions", {"prompt": prompt, "max_tokens": 2})
    return events[0][0]


async def test_repeated_prefixes_raise_hits_and_shorten_ttft(sim_server_factory,
                                                             http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory(time_scale=1.0)  # real time: ~0.3 s to prefill 6000 tokens
    shared = "A long shared system prompt about routing requests. " * 500
    cold = await ttft(http, server.url, shared + "First question?")
    before = sample(await scrape(http, server.url), "vllm:prefix_cache_hits_total")
    warm = await ttft(http, server.url, shared + "Second question?")
    metrics = await scrape(http, server.url)
    hits = sample(metrics, "vllm:prefix_cache_hits_total") - before
    assert hits > 5000
    assert sample(metrics, "vllm:prefix_cache_queries_total") > hits
    assert warm < cold / 3


async def test_over_max_num_seqs_the_waiting_gauge_rises(sim_server_factory,
                                                         http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory(time_scale=1.0, step_base=0.01, max_num_seqs=2)
    body = {"prompt": "hello", "max_tokens": 40}
    server.engine.pause()  # let all six arrive before the first step, however slow the machine
    tasks = [asyncio.create_task(stream(http, server.url + "/v1/completions", body)) for _ in range(6)]

    async def arrived() -> bool:
        return server.stats().waiting == 6

    await eventually(arrived)
    server.engine.resume()

    async def queued() -> bool:
        metrics = await scrape(http, server.url)
        return (sample(metrics, "vllm:num_requests_running") == 2
                and sample(metrics, "vllm:num_requests_waiting") == 4)

    await eventually(queued)
    results = await asyncio.gather(*tasks)
    assert all(r[-1][1] == b"[DONE]" for r in results)
    metrics = await scrape(http, server.url)
    assert sample(metrics, "vllm:num_requests_waiting") == 0
    assert sample(metrics, "vllm:request_queue_time_seconds_count") == 6


async def test_kv_usage_tracks_the_tokens_held(sim_server_factory, http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory(time_scale=1.0, step_base=0.005, num_gpu_blocks=200, max_model_len=2048)
    prompts = ["alpha " * 37, "beta " * 70, "gamma " * 3]
    prompt_lengths = [(await post_json(http, server.url + "/tokenize", {"prompt": p}))[1]["count"]
                      for p in prompts]
    received = [0] * len(prompts)

    async def consume(i: int) -> None:
        async with http.post(server.url + "/v1/completions",
                             json={"prompt": prompts[i], "max_tokens": 1500, "stream": True}) as response:
            async for line in response.content:
                if line.startswith(b"data: {"):
                    received[i] += 1

    tasks = [asyncio.create_task(consume(i)) for i in range(len(prompts))]

    async def all_decoding() -> bool:
        return all(n >= 3 for n in received)

    await eventually(all_decoding)
    await server.set_fault(FaultMode.HANG)  # freeze the engine; /sim/stats still answers

    async def stats_when_delivered() -> dict:
        async with http.get(server.url + "/sim/stats") as response:
            return await response.json()

    async def delivered() -> bool:  # every token produced has reached its client
        return sum(received) == (await stats_when_delivered())["generation_tokens"]

    await eventually(delivered)
    stats = await stats_when_delivered()
    # Every prompt token is in KV, and every output token but the newest (not yet fed back).
    held_tokens = [length + n - 1 for length, n in zip(prompt_lengths, received, strict=True)]
    expected_blocks = sum(math.ceil(t / 16) for t in held_tokens)
    assert stats["kv_blocks_used"] == expected_blocks
    assert math.isclose(stats["kv_usage"], expected_blocks / 200)
    await server.set_fault(FaultMode.OK)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    async def released() -> bool:
        return sample(await scrape(http, server.url), "vllm:kv_cache_usage_perc") == 0.0

    await eventually(released)


async def test_running_out_of_kv_preempts_and_everything_still_finishes(sim_server_factory,
                                                                        http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory(num_gpu_blocks=8, max_model_len=128)
    bodies = [{"prompt": f"request number {i} " * 6, "max_tokens": 70} for i in range(3)]
    server.engine.pause()  # all three must compete for the 8 blocks
    pending = asyncio.gather(*(post_json(http, server.url + "/v1/completions", b) for b in bodies))

    async def arrived() -> bool:
        return server.stats().waiting == 3

    await eventually(arrived)
    server.engine.resume()
    results = await pending
    assert all(status == 200 and body["usage"]["completion_tokens"] == 70 for status, body in results)
    metrics = await scrape(http, server.url)
    assert sample(metrics, "vllm:num_preemptions_total") >= 1
    assert server.stats().preemptions >= 1


async def test_a_slower_replica_takes_proportionally_longer(sim_server_factory,
                                                            http: aiohttp.ClientSession) -> None:
    fast = await sim_server_factory(time_scale=1.0, speed=1.0)
    slow = await sim_server_factory(time_scale=1.0, speed=3.0)
    body = {"prompt": "benchmark " * 400, "max_tokens": 10}

    async def latency(url: str) -> float:
        start = time.perf_counter()
        status, _ = await post_json(http, url + "/v1/completions", body)
        assert status == 200
        return time.perf_counter() - start

    assert await latency(slow.url) > 2 * await latency(fast.url)
