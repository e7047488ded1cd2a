"""Regression tests for the request-path defects of the hardening issue, through the ext_proc server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from epp.plugins.inflight.producer import InFlightLoadProducer
from epp.server.app import PickerServer
from epp.testing import ExtProcClient
from epp.testing.envoy_stream import body_message, request_headers_message, trailers_message

PickerFactory = Callable[..., Awaitable[PickerServer]]
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ENDPOINTS = {"10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"}

TRACKED_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: token-load-scorer
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: token-load-scorer
  - pluginRef: prefix-cache-scorer
dataLayer:
  sources: []
"""


def completion(prompt: str = "Hello there", **extra: object) -> bytes:
    return orjson.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 8, **extra})


def headers(**extra: str) -> list[tuple[str, bytes]]:
    base = {":method": "POST", ":path": "/v1/completions", ":authority": "gateway", "content-type": "application/json"}
    return [(k, v.encode()) for k, v in {**base, **extra}.items()]


def inflight(server: PickerServer) -> InFlightLoadProducer:
    assert server.config is not None
    found = [p for p in server.config.pre_request if isinstance(p, InFlightLoadProducer)]
    assert found, "the config must track in-flight load"
    return found[0]


def assert_idle(server: PickerServer) -> None:
    """Nothing a finished request added is still counted anywhere."""
    load = inflight(server).load
    for name in ENDPOINTS:
        assert (load.requests(name), load.tokens(name), load.prefill_backlog(name)) == (0, 0, 0), name
    running = server.metrics.running_requests.labels(MODEL).value
    assert running == 0, f"running gauge reads {running}"


async def wait_idle(server: PickerServer) -> None:
    # The picker finishes a stream when it sees the client's cancel, a moment after it.
    for _ in range(200):
        try:
            assert_idle(server)
            return
        except AssertionError:
            await asyncio.sleep(0.01)
    assert_idle(server)


@pytest.fixture
async def tracked(start_picker: PickerFactory) -> PickerServer:
    return await start_picker(config=TRACKED_CONFIG)


async def test_a_second_request_on_one_stream_is_refused_and_the_first_is_released(tracked: PickerServer) -> None:
    async with ExtProcClient(f"127.0.0.1:{tracked.grpc_port}") as client:
        stream = client.stream()
        await stream.send(request_headers_message(headers()))
        await stream.send(body_message(completion(), end_of_stream=True))
        routed = await stream.wait_for(lambda r: r.HasField("request_headers"))
        assert routed is not None
        assert tracked.metrics.running_requests.labels(MODEL).value == 1
        await stream.send(request_headers_message(headers()))
        await stream.send(body_message(completion("again"), end_of_stream=True))
        refused = await stream.wait_for(lambda r: r.HasField("immediate_response"))
        assert refused is not None and refused.immediate_response.status.code == 500
        assert b"second request on one stream" in refused.immediate_response.body
        await stream.abort()
    await wait_idle(tracked)


async def test_a_second_headers_only_request_on_one_stream_is_refused(tracked: PickerServer) -> None:
    async with ExtProcClient(f"127.0.0.1:{tracked.grpc_port}") as client:
        stream = client.stream()
        await stream.send(request_headers_message(headers(**{":method": "GET"}), end_of_stream=True))
        assert await stream.wait_for(lambda r: r.HasField("request_headers")) is not None
        await stream.send(request_headers_message(headers(**{":method": "GET"}), end_of_stream=True))
        refused = await stream.wait_for(lambda r: r.HasField("immediate_response"))
        assert refused is not None and refused.immediate_response.status.code == 500
        await stream.abort()
    await wait_idle(tracked)


@pytest.mark.parametrize("first", [body_message(completion(), end_of_stream=True), trailers_message()],
                         ids=["body", "trailers"])
async def test_a_body_or_trailers_before_headers_is_a_protocol_error_without_a_traceback(
        tracked: PickerServer, first: Any, caplog: pytest.LogCaptureFixture) -> None:
    async with ExtProcClient(f"127.0.0.1:{tracked.grpc_port}") as client:
        stream = client.stream()
        await stream.send(first)
        refused = await stream.wait_for(lambda r: r.HasField("immediate_response"))
        assert refused is not None and refused.immediate_response.status.code == 500
        assert b"before request headers" in refused.immediate_response.body
        await stream.abort()
        assert (await client.exchange(completion())).destination in ENDPOINTS  # the server keeps serving
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_rewrite_with_a_deeply_nested_body_never_leaves_the_running_gauge_negative(
        tracked: PickerServer) -> None:
    nested = (b'{"model": "' + MODEL.encode() + b'", "prompt": "hi", "max_tokens": 4, "deep": '
              + b"[" * 300 + b'"x"' + b"]" * 300 + b"}")
    async with ExtProcClient(f"127.0.0.1:{tracked.grpc_port}") as client:
        result = await client.exchange(nested, headers={"x-gateway-model-name-rewrite": "lora-7"},
                                       response_headers={"content-type": "application/json"},
                                       response_chunks=[b'{"model":"lora-7"}'])
        assert result.status in (None, 400)
        if result.status is None:
            assert result.destination in ENDPOINTS
    await wait_idle(tracked)


async def test_a_model_rewrite_changes_only_the_model_bytes(envoy: ExtProcClient) -> None:
    body = (b'{"model": "' + MODEL.encode() + b'", "prompt": "hi",  "seed": 18446744073709551616, '
            b'"temperature": -0, "top_k": 1E2, "stop": "\\u00e9"}')
    result = await envoy.exchange(body, headers={"x-gateway-model-name-rewrite": "lora-7"})
    assert result.body(request=True) == body.replace(MODEL.encode(), b"lora-7")
    assert result.set_headers["content-length"] == str(len(body) - len(MODEL) + len("lora-7"))


async def test_the_model_name_is_given_back_when_it_straddles_two_response_chunks(envoy: ExtProcClient) -> None:
    reply = b'{"id":"x","model":"lora-7","choices":[]}'
    cut = reply.index(b"lora") + 2
    result = await envoy.exchange(completion(), headers={"x-gateway-model-name-rewrite": "lora-7"},
                                  response_headers={"content-type": "application/json"},
                                  response_chunks=[reply[:cut], reply[cut:]])
    assert result.body(request=False) == reply.replace(b"lora-7", MODEL.encode())


async def test_an_overlong_model_rewrite_header_is_400(envoy: ExtProcClient) -> None:
    result = await envoy.exchange(completion(), headers={"x-gateway-model-name-rewrite": "m" * 100_000})
    assert result.status == 400


async def test_the_rewrite_header_is_ignored_when_the_picker_is_told_to(start_picker: PickerFactory) -> None:
    server = await start_picker(honor_rewrite_header=False)
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as client:
        body = completion()
        result = await client.exchange(body, headers={"x-gateway-model-name-rewrite": "lora-7"})
    assert result.body(request=True) == body


@pytest.mark.parametrize("header", ["x-gateway-inference-fairness-id", "x-gateway-inference-objective"])
async def test_an_overlong_flow_header_is_400_naming_the_header(envoy: ExtProcClient, header: str) -> None:
    result = await envoy.exchange(completion(), headers={header: "f" * 10_000})
    assert result.status == 400
    assert result.immediate is not None and header.encode() in result.immediate.body


async def test_an_overlong_request_id_is_replaced_by_a_generated_one(envoy: ExtProcClient) -> None:
    result = await envoy.exchange(completion(), headers={"x-request-id": "r" * 5000})
    generated = result.set_headers.get("x-request-id", "")
    assert generated and len(generated) < 100


async def test_request_bodies_beyond_the_inflight_budget_get_429_and_the_budget_is_given_back(
        start_picker: PickerFactory) -> None:
    server = await start_picker(max_inflight_body_bytes=3000)
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as client:
        holding = client.stream()
        await holding.send(request_headers_message(headers()))
        await holding.send(body_message(b'{"model":"' + MODEL.encode() + b'","prompt":"' + b"a" * 2000,
                                        end_of_stream=False))
        for _ in range(500):  # until the picker holds the first body's bytes
            if server.debug_state()["requestBodyBytesHeld"] > 0:
                break
            await asyncio.sleep(0.01)
        refused = await client.exchange(completion("b" * 2000), chunks=2)
        assert refused.status == 429
        await holding.send(body_message(b'"}', end_of_stream=True))
        assert await holding.wait_for(lambda r: r.HasField("request_headers")) is not None
        await holding.abort()
        # The first body was routed and the refused one gave its bytes back: room again.
        assert (await client.exchange(completion("c" * 2000), chunks=2)).destination in ENDPOINTS


async def test_unexpected_failures_log_one_traceback_a_minute(
        envoy: ExtProcClient, picker: PickerServer, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert picker.config is not None

    def broken(*_: Any) -> Any:
        raise ValueError("boom")

    monkeypatch.setattr(picker.config.parser, "parse_request", broken)
    with caplog.at_level(logging.ERROR):
        statuses = [(await envoy.exchange(completion())).status for _ in range(5)]
    assert statuses == [500] * 5
    assert len([r for r in caplog.records if r.exc_info]) == 1


async def test_the_served_endpoint_reported_in_response_metadata_reaches_the_verifier(
        start_picker: PickerFactory) -> None:
    from google.protobuf import struct_pb2

    from epp.testing.envoy_stream import response_headers_message

    config = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: destination-endpoint-served-verifier
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
dataLayer:
  sources: []
"""
    server = await start_picker(config=config)
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as client:
        stream = client.stream()
        await stream.send(request_headers_message(headers()))
        await stream.send(body_message(completion(), end_of_stream=True))
        assert await stream.wait_for(lambda r: r.HasField("request_headers")) is not None
        reply = response_headers_message({"content-type": "application/json"})
        served = struct_pb2.Struct()
        served.fields["x-gateway-destination-endpoint-served"].string_value = "10.0.0.2:8000"
        reply.metadata_context.filter_metadata["envoy.lb"].CopyFrom(served)
        await stream.send(reply)
        answer = await stream.wait_for(lambda r: r.HasField("response_headers"))
        await stream.abort()
    assert answer is not None
    mutation = answer.response_headers.response.header_mutation
    echoed = {h.header.key: h.header.raw_value for h in mutation.set_headers}
    assert echoed == {"x-conformance-test-served-endpoint": b"10.0.0.2:8000"}


async def test_debug_state_shows_every_per_request_structure_back_to_idle(tracked: PickerServer) -> None:
    import aiohttp

    async with ExtProcClient(f"127.0.0.1:{tracked.grpc_port}") as client:
        await client.exchange(completion(), response_headers={"content-type": "application/json"},
                              response_chunks=[b'{"usage":{"prompt_tokens":3,"completion_tokens":2}}'])
        await client.exchange(completion("aborted"), abort_after_request=True)
        await client.exchange(b"{not json")
    await wait_idle(tracked)
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{tracked.metrics_port}/debug/state") as response:
        state = await response.json()
    assert state["requestBodyBytesHeld"] == 0
    inflight = state["plugins"]["inflight-load-producer/inflight-load-producer"]
    assert (inflight["requests"], inflight["tokens"], inflight["prefillBacklog"]) == (0, 0, 0)
    assert state["decisionLog"] == {"traces": 2, "ids": 2}
    assert state["metrics"]["servedModels"] == 1
    assert state["metrics"]["labelSets"]["inference_objective_running_requests"] == 1


@pytest.mark.parametrize("early", ["headers", "body"])
async def test_a_request_body_after_an_early_response_is_refused_and_leaves_nothing_held(
        tracked: PickerServer, early: str) -> None:
    from epp.testing.envoy_stream import response_headers_message

    async with ExtProcClient(f"127.0.0.1:{tracked.grpc_port}") as client:
        stream = client.stream()
        await stream.send(request_headers_message(headers()))
        premature = (response_headers_message({}, end_of_stream=True) if early == "headers"
                     else body_message(b"x", end_of_stream=True, request=False))
        await stream.send(premature)
        await stream.send(body_message(completion(), end_of_stream=True))
        passed = await stream.wait_for(lambda r: r.HasField("response_headers") or r.HasField("response_body"))
        assert passed is not None  # Envoy's own early reply goes on untouched
        refused = await stream.wait_for(lambda r: r.HasField("immediate_response"))
        assert refused is not None and b"request body after a response" in refused.immediate_response.body
        await stream.abort()
    await wait_idle(tracked)


async def test_repeated_response_headers_cannot_eject_an_endpoint(tracked: PickerServer) -> None:
    from epp.testing.envoy_stream import response_headers_message

    async with ExtProcClient(f"127.0.0.1:{tracked.grpc_port}") as client:
        stream = client.stream()
        await stream.send(request_headers_message(headers()))
        await stream.send(body_message(completion(), end_of_stream=True))
        assert await stream.wait_for(lambda r: r.HasField("request_headers")) is not None
        for _ in range(6):
            await stream.send(response_headers_message({":status": "500"}))
        refused = await stream.wait_for(lambda r: r.HasField("immediate_response"))
        assert refused is not None and b"second set of response headers" in refused.immediate_response.body
        await stream.abort()
    await wait_idle(tracked)
    assert tracked.debug_state()["ejectedEndpoints"] == 0


async def test_an_empty_ext_proc_message_is_a_protocol_error(tracked: PickerServer,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    async with ExtProcClient(f"127.0.0.1:{tracked.grpc_port}") as client:
        stream = client.stream()
        await stream.send(pb.ProcessingRequest())
        refused = await stream.wait_for(lambda r: r.HasField("immediate_response"))
        await stream.abort()
    assert refused is not None and b"without a request or response part" in refused.immediate_response.body
    assert not [r for r in caplog.records if r.exc_info]
