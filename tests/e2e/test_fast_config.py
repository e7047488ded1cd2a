"""The recommended Envoy config (config/envoy-fast.yaml), end to end through real Envoy.

Responses reach the picker on an observe-only ext_proc stream Envoy never waits for. A
user sees the same responses as with the standard config; the picker still records usage
and TTFT and releases every request; and a picker killed mid-stream no longer cuts the
streams it had already routed (the standard config's behaviour is the contrast).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from e2e_support import MODEL, SIM_ARGS, completion, post  # type: ignore[import-not-found]

from epp.devstack.envoy import fast_bootstrap_path, repo_bootstrap_path
from epp.devstack.stack import Stack
from epp.testing.waiting import eventually

LONG_STREAM = 60  # tokens: at the simulators' pace, a few seconds of streaming


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("fast"), replicas=2, sim_args=SIM_ARGS, envoy_template=fast_bootstrap_path(),
               picker_args=["--refresh-metrics-interval", "20ms"]) as running:
        yield running


def admin_json(stack: Stack, path: str) -> dict[str, object]:
    with urllib.request.urlopen(stack.admin_url + path) as response:
        result: dict[str, object] = json.load(response)
    return result


def metric(stack: Stack, name: str) -> float:
    """Sum of a metric's samples (all label sets) on the picker's /metrics."""
    with urllib.request.urlopen(stack.admin_url + "/metrics") as response:
        text = response.read().decode()
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def inflight(stack: Stack) -> int:
    plugins = admin_json(stack, "/debug/state")["plugins"]
    assert isinstance(plugins, dict)
    return int(plugins["inflight-load-producer/inflight-load-producer"]["requests"])


def envoy_stat(stack: Stack, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports.envoy_admin}/stats?filter=^{name}$") as response:
        line = response.read().decode().strip()
    return int(line.rsplit(":", 1)[1]) if line else 0


def sse_events(body: bytes) -> list[bytes]:
    return [line[len(b"data: "):] for line in body.split(b"\n") if line.startswith(b"data: ")]


async def test_streaming_passes_through_chunk_by_chunk_and_unchanged(fast: Stack) -> None:
    sent_before = envoy_stat(fast, "http.inference.ext_proc.stream_msgs_sent")
    async with aiohttp.ClientSession() as session:
        reply = await post(session, fast.url, completion("count slowly", max_tokens=40, stream=True))
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = sse_events(reply.body)
    assert events[-1] == b"[DONE]"
    texts = [orjson.loads(e)["choices"][0]["text"] for e in events[:-1] if orjson.loads(e)["choices"]]
    assert len(texts) == 40 and all(texts)
    assert {orjson.loads(e)["model"] for e in events[:-1]} == {MODEL}
    first, last = reply.chunks[0][0], reply.chunks[-1][0]
    assert len(reply.chunks) >= 10 and last - first > 0.5 * last
    # None of the response went through the routing filter: only the request's messages did.
    assert envoy_stat(fast, "http.inference.ext_proc.stream_msgs_sent") - sent_before <= 3


async def test_usage_and_ttft_are_recorded_from_the_observed_stream(fast: Stack) -> None:
    ttft_before = metric(fast, "inference_objective_request_ttft_seconds_count")
    tokens_before = metric(fast, "inference_objective_output_tokens_sum")
    async with aiohttp.ClientSession() as session:
        reply = await post(session, fast.url, completion("usage please", max_tokens=12, stream=True,
                                                         stream_options={"include_usage": True}))
    assert reply.status == 200
    usage = [orjson.loads(e)["usage"] for e in sse_events(reply.body)[:-1] if orjson.loads(e).get("usage")]
    assert usage[-1]["completion_tokens"] == 12
    await eventually(lambda: metric(fast, "inference_objective_request_ttft_seconds_count") == ttft_before + 1,
                     what="TTFT recorded")
    assert metric(fast, "inference_objective_output_tokens_sum") == tokens_before + 12


async def test_requests_are_released_when_they_end_and_when_their_client_leaves(fast: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        finished = await post(session, fast.url, completion("short", max_tokens=4))
        assert finished.status == 200
        await eventually(lambda: inflight(fast) == 0, what="finished request released")
        # A client that leaves after the first chunk of a long stream.
        async with session.post(fast.url + "/v1/completions",
                                data=completion("a long story", max_tokens=LONG_STREAM, stream=True),
                                headers={"content-type": "application/json"}) as response:
            assert response.status == 200
            await response.content.readany()
            assert inflight(fast) == 1
            assert metric(fast, "inference_objective_running_requests") == 1
            response.close()
    await eventually(lambda: inflight(fast) == 0, timeout=10.0, what="abandoned stream released")
    assert metric(fast, "inference_objective_running_requests") == 0


async def test_a_rewritten_model_name_is_given_back_on_the_routing_stream(tmp_path: Path) -> None:
    # The shipped config strips a client's rewrite header; unstripped here to send one.
    sim_args = [*SIM_ARGS, "--lora-modules", "some-lora-adapter=/adapters/some"]
    with Stack(tmp_path, replicas=1, sim_args=sim_args, envoy_template=fast_bootstrap_path(),
               envoy_options={"strip_headers": []}) as stack:
        async with aiohttp.ClientSession() as session:
            reply = await post(session, stack.url, completion("hi", max_tokens=6, stream=True),
                               headers={"x-gateway-model-name-rewrite": "some-lora-adapter"})
        assert reply.status == 200
        events = sse_events(reply.body)
        assert events[-1] == b"[DONE]"
        assert {orjson.loads(e)["model"] for e in events[:-1]} == {MODEL}
        await eventually(lambda: inflight(stack) == 0, what="rewritten request released")


@pytest.mark.parametrize(("template", "streams_survive"), [(fast_bootstrap_path(), True),
                                                          (repo_bootstrap_path(), False)], ids=["fast", "standard"])
async def test_a_killed_picker_lets_routed_streams_finish_only_with_the_fast_config(
        tmp_path: Path, template: Path, streams_survive: bool) -> None:
    with Stack(tmp_path, replicas=2, sim_args=SIM_ARGS, envoy_template=template) as stack:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            responses = [await session.post(stack.url + "/v1/completions", headers={"content-type": "application/json"},
                                            data=completion(f"story {i}", max_tokens=LONG_STREAM, stream=True))
                         for i in range(4)]
            bodies = [await r.content.readany() for r in responses]
            assert stack.picker is not None
            stack.picker.signal(signal.SIGKILL)
            assert stack.picker.proc is not None
            await asyncio.to_thread(stack.picker.proc.wait, 10)

            async def rest(response: aiohttp.ClientResponse, start: bytes) -> bytes | None:
                try:
                    return start + await response.content.read()
                except aiohttp.ClientError:
                    return None
                finally:
                    response.release()

            completed = await asyncio.gather(*(rest(r, b) for r, b in zip(responses, bodies, strict=True)))
            refused = await post(session, stack.url, completion("after the picker died"))
        whole = [body is not None and sse_events(body)[-1:] == [b"[DONE]"] for body in completed]
        assert whole == [streams_survive] * 4
        assert refused.status == 500  # new requests fail closed, as configured
