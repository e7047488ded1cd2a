"""Routing through real Envoy to simulated vLLM servers, as a user would see it."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import Counter

import aiohttp
import orjson
from e2e_support import MODEL, chat, completion, post, post_many  # type: ignore[import-not-found]

from epp.devstack.stack import Stack
from epp.testing.errors import error_message

SYSTEM = ("You are the support assistant of a bicycle shop. Be brief, cite the warranty section, and "
          "never promise delivery dates you cannot check. ") * 25


async def test_requests_are_served_through_envoy_by_all_replicas(stack: Stack) -> None:
    replies = await post_many(stack.url, [completion(f"prompt number {i}") for i in range(30)], concurrent=False)
    assert [r.status for r in replies] == [200] * 30
    assert {r.upstream for r in replies} == {stack.sim_hostport(i) for i in range(3)}
    assert all(orjson.loads(r.body)["choices"][0]["text"] for r in replies)


async def test_a_loaded_replica_is_avoided(stack: Stack) -> None:
    busy = stack.sim_hostport(0)
    long_body = completion("write an essay about rivers", max_tokens=600)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        # Load replica 0 directly (not through the picker): 4 running + 8 waiting.
        background = [asyncio.create_task(post(session, f"http://{busy}", long_body)) for _ in range(12)]
        await asyncio.sleep(1.0)  # several scrapes see the queue
        replies = [await post(session, stack.url, completion(f"short {i}", max_tokens=2)) for i in range(12)]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
    served = Counter(r.upstream for r in replies)
    assert all(r.status == 200 for r in replies)
    assert served[busy] == 0, served


async def test_streaming_passes_through_chunk_by_chunk(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        reply = await post(session, stack.url, completion("count slowly", max_tokens=40, stream=True))
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [line for line in reply.body.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    assert len(events) >= 40
    # Chunks arrive spread over time, not all at the end.
    first, last = reply.chunks[0][0], reply.chunks[-1][0]
    assert len(reply.chunks) >= 10
    assert last - first > 0.5 * last


async def test_malformed_json_gets_400_through_envoy(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        reply = await post(session, stack.url, b'{"model": "x", "prompt": ')
        missing_model = await post(session, stack.url, orjson.dumps({"prompt": "hi"}))
        fine = await post(session, stack.url, completion())
    assert reply.status == 400
    assert error_message(reply.body).startswith("inference error: BadRequest - ")
    assert missing_model.status == 400
    # What an OpenAI SDK reads: a JSON error object naming the field, with the reason.
    assert missing_model.headers["content-type"] == "application/json"
    error = orjson.loads(missing_model.body)["error"]
    assert (error["type"], error["param"], error["code"]) == ("BadRequestError", "model", 400)
    assert "model not found in request body" in error["message"] and "no default model" in error["message"]
    assert fine.status == 200


async def test_requests_sharing_a_prefix_land_on_the_same_replica_while_load_is_light(stack: Stack) -> None:
    replies = await post_many(stack.url, [chat(SYSTEM, f"question {i}?") for i in range(8)],
                              path="/v1/chat/completions", concurrent=False)
    assert all(r.status == 200 for r in replies)
    assert len({r.upstream for r in replies}) == 1
    # The simulator confirms prefix-cache hits: cached tokens reported in usage.
    usage = [orjson.loads(r.body)["usage"] for r in replies]
    assert usage[-1]["prompt_tokens_details"]["cached_tokens"] > 0.8 * usage[-1]["prompt_tokens"]


async def test_headers_only_request_reaches_a_model_server(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session, session.get(stack.url + "/v1/models") as response:
        assert response.status == 200
        models = await response.json()
    assert models["data"][0]["id"] == MODEL


def test_picker_explains_decisions_and_exports_metrics(stack: Stack) -> None:
    with urllib.request.urlopen(f"{stack.admin_url}/debug/decisions?limit=1") as response:
        decisions = json.load(response)["decisions"]
    profile = decisions[0]["profiles"]["default"]
    assert {s["plugin"].split("/")[1] for s in profile["scorers"]} == {
        "queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer", "prefill-load-scorer"}
    with urllib.request.urlopen(f"{stack.admin_url}/metrics") as response:
        text = response.read().decode()
    assert "inference_objective_request_total{" in text
    assert 'inference_pool_ready_pods{name="default"} 3.0' in text


async def test_a_hot_prefix_spills_over_to_another_replica_instead_of_queueing(stack: Stack) -> None:
    system = ("You are the triage assistant of a hospital. Ask for symptoms, never diagnose, and escalate "
              "anything urgent to a nurse immediately. ") * 25
    # A burst far beyond one replica's 4 running slots, all sharing one (cold) prefix.
    bodies = [chat(system, f"patient {i} reports a headache", max_tokens=60) for i in range(24)]
    replies = await post_many(stack.url, bodies, path="/v1/chat/completions")
    assert [r.status for r in replies] == [200] * 24
    served = Counter(r.upstream for r in replies)
    # Spilled over: counted as running instead of waiting, dispatches sent all 24 to one replica.
    # Nothing is asserted about how much the prefix still concentrates the burst: measured over
    # cold bursts it ranged from 9/9/6 to 15/9, and without the prefix scorer from 8/8/8 to 10/7/7,
    # so no bound separates the two (affinity under light load is test_requests_sharing_a_prefix_...).
    assert len(served) >= 2, served
