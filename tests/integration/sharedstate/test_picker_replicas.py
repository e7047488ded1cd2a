"""Two whole picker servers started with ``--state-store``: what one routes, the other knows.

Each replica runs the default prefix and queue scorers over the same three endpoints with
no scrapes, so the only thing that can steer the second replica to where the first sent a
prompt is the prefix index it learned through Redis.
"""

from __future__ import annotations

import aiohttp
import orjson

from epp.server.app import PickerServer
from epp.testing import ExtProcClient
from epp.testing.waiting import eventually
from tests.integration.conftest import PickerFactory
from tests.integration.sharedstate.conftest import RedisProcess

PROMPTS = [f"You are assistant number {i}. Follow the house style guide closely. " * 30 for i in range(6)]


def body(prompt: str) -> bytes:
    return orjson.dumps({"model": "m", "prompt": prompt + "Question?", "max_tokens": 1})


def shared(server: PickerServer) -> dict[str, object]:
    state = server.debug_state()["sharedState"]
    assert isinstance(state, dict)
    return state


def connected(server: PickerServer) -> bool:
    return shared(server)["connected"] is True


async def test_the_second_replica_routes_each_prompt_where_the_first_sent_it(
        start_picker: PickerFactory, redis: RedisProcess) -> None:
    first = await start_picker(state_store=redis.url, state_replica_id="a")
    second = await start_picker(state_store=redis.url, state_replica_id="b", seed=12345)
    await eventually(lambda: connected(first) and connected(second), what="both connected")
    async with ExtProcClient(f"127.0.0.1:{first.grpc_port}") as via_first:
        chosen = [(await via_first.exchange(body(prompt))).destination for prompt in PROMPTS]
    assert len(set(chosen)) > 1  # the queue scorer spreads them, so matching them is not luck

    await eventually(lambda: _applied(second) >= len(PROMPTS), what="the first replica's prefixes reach the second")
    async with ExtProcClient(f"127.0.0.1:{second.grpc_port}") as via_second:
        again = [(await via_second.exchange(body(prompt))).destination for prompt in PROMPTS]
    assert again == chosen


def _applied(server: PickerServer) -> int:
    prefix = shared(server)["prefix"]
    assert isinstance(prefix, dict)
    value = prefix["recordsApplied"]
    assert isinstance(value, int)
    return value


async def test_a_lost_store_is_said_in_readyz_while_the_picker_keeps_routing(
        start_picker: PickerFactory, redis: RedisProcess) -> None:
    picker = await start_picker(state_store=redis.url, state_replica_id="a")
    await eventually(lambda: connected(picker), what="connected")

    async def readyz() -> tuple[int, str]:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{picker.metrics_port}/readyz") as answer:
            return answer.status, await answer.text()

    assert await readyz() == (200, "ready\n")
    redis.kill()
    await eventually(lambda: not connected(picker), timeout=10.0, what="the loss noticed")
    status, text = await readyz()
    assert status == 200 and text.startswith("ready\ndegraded: shared state: ")
    async with ExtProcClient(f"127.0.0.1:{picker.grpc_port}") as envoy:
        assert (await envoy.exchange(body(PROMPTS[0]))).destination is not None
    redis.start()
    await eventually(lambda: connected(picker), timeout=15.0, what="reconnected")
    assert await readyz() == (200, "ready\n")
