"""SSE streaming: vLLM's chunk format, [DONE], usage chunk, pacing and client disconnects."""

from __future__ import annotations

import statistics

import aiohttp
import orjson
from sim_http_helpers import eventually, post_json, stream

CHAT = [{"role": "user", "content": "Count to ten."}]


async def test_chat_stream_format(sim_server_factory, http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory()
    events = await stream(http, server.url + "/v1/chat/completions",
                          {"messages": CHAT, "max_tokens": 6, "stream_options": {"include_usage": True}})
    payloads = [e for _, e in events]
    assert payloads[-1] == b"[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c for c in chunks[1:] if c["choices"]]
    assert len(content) == 6
    assert [c["choices"][0]["finish_reason"] for c in content] == [None] * 5 + ["length"]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6


async def test_completion_stream_matches_the_non_streamed_text(sim_server_factory,
                                                               http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory()
    body = {"prompt": "The weather today", "max_tokens": 12}
    events = await stream(http, server.url + "/v1/completions", body)
    chunks = [orjson.loads(p) for _, p in events[:-1]]
    assert events[-1][1] == b"[DONE]"
    assert all(c["object"] == "text_completion" and "usage" not in c for c in chunks)  # no include_usage
    streamed = "".join(c["choices"][0]["text"] for c in chunks)
    _, whole = await post_json(http, server.url + "/v1/completions", body)
    assert streamed == whole["choices"][0]["text"]


async def test_stream_interval_groups_tokens_per_chunk(sim_server_factory,
                                                       http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory(stream_interval=4)
    events = await stream(http, server.url + "/v1/completions", {"prompt": "x", "max_tokens": 10})
    assert len(events) == 3 + 1  # 4 + 4 + 2 tokens, then [DONE]


async def test_chunks_arrive_spaced_by_the_inter_token_time(sim_server_factory,
                                                            http: aiohttp.ClientSession) -> None:
    # A 40 ms decode step, in real time, so the spacing is well above scheduler noise.
    server = await sim_server_factory(time_scale=1.0, step_base=0.04)
    events = await stream(http, server.url + "/v1/completions", {"prompt": "x", "max_tokens": 8})
    times = [t for t, _ in events[:-1]]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert statistics.median(gaps) > 0.025
    assert times[-1] - times[0] > 0.8 * 7 * 0.04


async def test_a_client_that_disconnects_frees_its_request(sim_server_factory,
                                                           http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory(time_scale=1.0, step_base=0.01)
    body = {"prompt": "a long answer please", "max_tokens": 5000, "stream": True}
    async with http.post(server.url + "/v1/completions", json=body) as response:
        await response.content.readline()  # the first chunk has arrived: the request is running
        assert server.stats().running == 1
    # Leaving the block closes the connection mid-stream.

    async def freed() -> bool:
        stats = server.stats()
        return stats.running == 0 and stats.requests_aborted == 1 and stats.kv_blocks_used == 0

    await eventually(freed)
