"""The picker learns the simulator's characters per token from real responses' usage.

The test plays Envoy: each request is routed by the in-process picker (default config,
scraping the simulators), forwarded to the simulator it chose, and the simulator's answer
(with its ``usage``) is passed back through the ext_proc stream, as Envoy does. The
simulator's tokenizer reads this code at about 2.4 characters per token, far from the default 4.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
import pytest

from epp.plugins.prefix.producer import ApproxPrefixCacheProducer
from epp.server.app import PickerServer
from epp.sim.server import SimServer
from epp.testing import ExtProcClient
from epp.testing.envoy_stream import body_message, request_headers_message, response_headers_message
from epp.testing.waiting import eventually

PickerFactory = Callable[..., Awaitable[PickerServer]]  # the start_picker fixture
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
REQUESTS = 10


def code_prompt(i: int) -> str:
    return f"def handler_{i}(request, ctx):\n    return ctx[{i}].get(request.id, None)  # lookup\n" * 4


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def proxy(client: ExtProcClient, http: aiohttp.ClientSession, body: bytes, request_id: str) -> int:
    """Route one request, forward it to the chosen simulator, pass the answer back; the usage's prompt tokens."""
    async with client.stream() as stream:
        await stream.send(request_headers_message([
            (":method", b"POST"), (":path", b"/v1/completions"), (":authority", b"gateway"),
            ("content-type", b"application/json"), ("x-request-id", request_id.encode())]))
        await stream.send(body_message(body, end_of_stream=True))
        await stream.wait_for(lambda r: r.HasField("request_headers") or r.HasField("immediate_response"))
        destination = stream.result.destination
        assert destination is not None, stream.result.responses
        async with http.post(f"http://{destination}/v1/completions", data=body,
                             headers={"content-type": "application/json"}) as response:
            answer = await response.read()
            await stream.send(response_headers_message(
                {":status": str(response.status), "content-type": response.headers.get("content-type", "")}))
        await stream.send(body_message(answer, end_of_stream=True, request=False))
        await stream.close()
    tokens = orjson.loads(answer)["usage"]["prompt_tokens"]
    assert isinstance(tokens, int)
    return tokens


def producer_of(server: PickerServer) -> ApproxPrefixCacheProducer:
    assert server.config is not None
    (producer,) = (p for p in server.config.plugins.values() if isinstance(p, ApproxPrefixCacheProducer))
    return producer


async def test_the_picker_learns_the_simulators_characters_per_token(
    start_picker: PickerFactory, sims: list[SimServer], http: aiohttp.ClientSession
) -> None:
    server = await start_picker(endpoints=",".join(f"127.0.0.1:{s.port}" for s in sims), config=None,
                                refresh_metrics_interval=0.02, scrape_timeout=0.5)
    await eventually(lambda: all(ep.metrics.update_time > 0 for ep in server.pool.endpoints()),
                     what="first scrape of every simulator")
    prompt_bytes = prompt_tokens = 0
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as client:
        for i in range(REQUESTS):
            prompt = code_prompt(i)
            body = orjson.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 2})
            prompt_tokens += await proxy(client, http, body, f"req-{i}")
            prompt_bytes += len(prompt.encode())
    told = prompt_bytes / prompt_tokens
    assert told < 3.4  # far enough from 4 to be adopted
    (learned,) = producer_of(server).chars_per_token_snapshot().values()
    assert learned["samples"] == REQUESTS
    # Samples decay by 1/200 each, so the learned value is the usage's ratio to within 1 %.
    assert learned["learned"] == pytest.approx(told, rel=0.01)
    assert learned["charsPerToken"] == pytest.approx(told, rel=0.01)
    # What an operator sees: the learned value beside the endpoints in /debug/endpoints.
    async with http.get(f"http://127.0.0.1:{server.metrics_port}/debug/endpoints") as page:
        shown = (await page.json())["charsPerToken"]
    ((_, per_model),) = shown.items()
    assert per_model[MODEL]["charsPerToken"] == pytest.approx(told, rel=0.01)
