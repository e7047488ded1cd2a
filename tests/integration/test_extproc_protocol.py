"""The GIE endpoint-picker protocol, seen from Envoy's side of the ext_proc stream."""

from __future__ import annotations

import orjson
import pytest
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as modes

from epp.plugins.parsers.openai import MISSING_MODEL_MESSAGE
from epp.server.app import PickerServer
from epp.testing import ExtProcClient
from epp.testing.errors import error_message
from tests.integration.conftest import PickerFactory

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ENDPOINTS = {"10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"}


def completion(prompt: str = "Hello there", **extra: object) -> bytes:
    return orjson.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 8, **extra})


async def test_destination_is_set_in_header_and_metadata_and_body_is_forwarded(envoy: ExtProcClient) -> None:
    body = completion()
    result = await envoy.exchange(body)
    assert result.immediate is None
    assert result.destination in ENDPOINTS
    assert result.metadata_destination == result.destination
    assert result.body(request=True) == body  # forwarded byte for byte, not re-serialised
    assert result.bodies(request=True)[-1].end_of_stream


async def test_body_split_across_many_chunks_is_reassembled(envoy: ExtProcClient) -> None:
    body = completion("word " * 5000)
    result = await envoy.exchange(body, chunks=7)
    assert result.destination in ENDPOINTS
    assert result.body(request=True) == body
    assert all(len(chunk.body) <= 62_000 for chunk in result.bodies(request=True))


async def test_large_body_goes_back_in_chunks_envoy_accepts(envoy: ExtProcClient) -> None:
    body = completion("x" * 200_000)
    result = await envoy.exchange(body, chunks=3)
    chunks = result.bodies(request=True)
    assert len(chunks) >= 4
    assert max(len(c.body) for c in chunks) <= 62_000
    assert [c.end_of_stream for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert result.body(request=True) == body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model": "m", "prompt": ', "error unmarshaling request body"),
        (b"[1, 2, 3]", "error unmarshaling request body"),
        (orjson.dumps({"prompt": "hi"}), "model not found in request body"),
        (orjson.dumps({"model": MODEL}), "invalid completions request: must have prompt field"),
    ],
    ids=["malformed JSON", "JSON that is not an object", "no model", "no prompt"],
)
async def test_bad_requests_get_400_with_the_go_epp_message(envoy: ExtProcClient, body: bytes, message: str) -> None:
    result = await envoy.exchange(body)
    assert result.status == 400
    assert result.immediate is not None
    assert error_message(result.immediate.body).startswith("inference error: BadRequest - ")
    assert message in result.immediate.body.decode()


async def test_chat_without_messages_is_400(envoy: ExtProcClient) -> None:
    result = await envoy.exchange(orjson.dumps({"model": MODEL, "messages": []}), path="/v1/chat/completions")
    assert result.status == 400
    assert b"must have valid messages field" in result.immediate.body  # type: ignore[union-attr]


async def test_subset_hint_narrows_candidates(envoy: ExtProcClient) -> None:
    seen = set()
    for _ in range(20):
        result = await envoy.exchange(completion(), subset=["10.0.0.2:8000"])
        seen.add(result.destination)
    assert seen == {"10.0.0.2:8000"}


async def test_subset_hint_by_ip_only_matches_that_host(envoy: ExtProcClient) -> None:
    result = await envoy.exchange(completion(), subset=["10.0.0.3"])
    assert result.destination == "10.0.0.3:8000"


async def test_empty_subset_hint_is_503(envoy: ExtProcClient) -> None:
    result = await envoy.exchange(completion(), subset=[])
    assert result.status == 503
    assert b"failed to find endpoint candidates" in result.immediate.body  # type: ignore[union-attr]


async def test_subset_hint_naming_unknown_endpoints_is_503(envoy: ExtProcClient) -> None:
    result = await envoy.exchange(completion(), subset=["192.168.9.9:8000"])
    assert result.status == 503


async def test_subset_hint_is_ignored_when_disabled(start_picker) -> None:  # type: ignore[no-untyped-def]
    server = await start_picker(honor_subset_hint=False)
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as client:
        result = await client.exchange(completion(), subset=[])
    assert result.destination in ENDPOINTS


async def test_request_id_is_generated_when_absent_and_kept_when_present(envoy: ExtProcClient) -> None:
    generated = await envoy.exchange(completion())
    assert len(generated.set_headers["x-request-id"]) == 36
    kept = await envoy.exchange(completion(), headers={"x-request-id": "abc-123"})
    assert "x-request-id" not in kept.set_headers  # already on the request; nothing to add


async def test_control_headers_are_stripped_and_client_cannot_choose_destination(envoy: ExtProcClient) -> None:
    result = await envoy.exchange(completion(), headers={
        "x-gateway-destination-endpoint": "6.6.6.6:666",
        "x-gateway-inference-objective": "premium",
        "x-gateway-inference-fairness-id": "tenant-a",
    })
    assert result.destination in ENDPOINTS  # overwrites whatever the client sent
    assert sorted(result.removed_headers) == ["x-gateway-inference-fairness-id", "x-gateway-inference-objective"]


async def test_requests_without_control_headers_remove_nothing(envoy: ExtProcClient) -> None:
    result = await envoy.exchange(completion())
    assert result.removed_headers == []


async def test_model_name_rewrite_changes_body_and_content_length(envoy: ExtProcClient) -> None:
    result = await envoy.exchange(completion(), headers={"x-gateway-model-name-rewrite": "llama-lora-7"})
    forwarded = orjson.loads(result.body(request=True))
    assert forwarded["model"] == "llama-lora-7"
    assert forwarded["prompt"] == "Hello there"
    assert result.set_headers["content-length"] == str(len(result.body(request=True)))


async def test_model_name_is_rewritten_back_in_the_response(envoy: ExtProcClient) -> None:
    response = b'{"id":"1","model":"llama-lora-7","choices":[]}'
    result = await envoy.exchange(completion(), headers={"x-gateway-model-name-rewrite": "llama-lora-7"},
                                  response_headers={"content-type": "application/json"}, response_chunks=[response])
    assert orjson.loads(result.body(request=False))["model"] == MODEL


async def test_headers_only_request_goes_to_a_random_endpoint(envoy: ExtProcClient) -> None:
    seen = {(await envoy.exchange(None, path="/v1/models")).destination for _ in range(30)}
    assert seen == ENDPOINTS


async def test_buffered_mode_puts_destination_on_the_body_response(envoy: ExtProcClient) -> None:
    result = await envoy.exchange(completion(), buffered=True)
    headers_reply, body_reply = result.responses
    assert not headers_reply.request_headers.response.HasField("header_mutation")
    assert body_reply.request_body.response.clear_route_cache
    assert result.destination in ENDPOINTS
    assert result.metadata_destination == result.destination


async def test_buffered_mode_with_rewrite_replaces_the_body(envoy: ExtProcClient) -> None:
    result = await envoy.exchange(completion(), buffered=True, headers={"x-gateway-model-name-rewrite": "other"})
    body_reply = result.responses[-1].request_body.response
    assert orjson.loads(body_reply.body_mutation.body)["model"] == "other"


async def test_request_ending_with_trailers_is_routed(envoy: ExtProcClient) -> None:
    body = completion()
    result = await envoy.exchange(body, request_trailers=True)
    assert result.destination in ENDPOINTS
    assert result.body(request=True) == body
    assert any(r.HasField("request_trailers") for r in result.responses)


async def test_streamed_response_passes_through_chunk_by_chunk(envoy: ExtProcClient) -> None:
    chunks = [b'data: {"choices":[{"text":"a"}]}\n\n', b'data: {"choices":[{"text":"b"}]}\n\n', b"data: [DONE]\n\n"]
    result = await envoy.exchange(completion(stream=True), response_headers={"content-type": "text/event-stream"},
                                  response_chunks=chunks)
    forwarded = result.bodies(request=False)
    assert [c.body for c in forwarded] == chunks
    assert [c.end_of_stream for c in forwarded] == [False, False, True]


async def test_oversized_body_gets_413(start_picker) -> None:  # type: ignore[no-untyped-def]
    server = await start_picker(max_request_body_bytes=10_000)
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as client:
        result = await client.exchange(completion("y" * 50_000), chunks=5)
        assert result.status == 413
        ok = await client.exchange(completion())  # the server keeps serving
        assert ok.destination in ENDPOINTS


async def test_empty_pool_is_503_for_headers_only_requests_too(start_picker) -> None:  # type: ignore[no-untyped-def]
    server: PickerServer = await start_picker(endpoints=",")
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as client:
        assert (await client.exchange(None)).status == 503
        assert (await client.exchange(completion())).status == 503


async def test_several_endpoints_go_in_metadata_and_the_primary_in_the_header(start_picker) -> None:  # type: ignore[no-untyped-def]
    config = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: max-score-picker
  parameters: {maxNumOfEndpoints: 2}
dataLayer:
  sources: []
"""
    server = await start_picker(config=config)
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as client:
        result = await client.exchange(completion())
    listed = result.metadata_destination.split(",")  # type: ignore[union-attr]
    assert len(listed) == 2 and set(listed) <= ENDPOINTS
    assert result.destination == listed[0]  # one address: what ORIGINAL_DST can use


async def test_forwarded_body_states_its_content_length(envoy: ExtProcClient) -> None:
    body = completion("a" * 70_000)
    result = await envoy.exchange(body, chunks=3)
    assert result.set_headers["content-length"] == str(len(body))


async def test_a_request_body_mode_that_cannot_carry_a_destination_is_refused(envoy: ExtProcClient) -> None:
    streamed = modes.ProcessingMode.STREAMED
    result = await envoy.exchange(completion(), request_mode=streamed)
    assert result.status == 500
    assert b"request_body_mode STREAMED" in result.immediate.body  # type: ignore[union-attr]
    assert b"FULL_DUPLEX_STREAMED" in result.immediate.body  # type: ignore[union-attr]


async def test_buffered_body_followed_by_trailers_is_routed(envoy: ExtProcClient) -> None:
    result = await envoy.exchange(completion(), buffered=True, request_trailers=True)
    assert result.destination in ENDPOINTS
    assert any(r.HasField("request_trailers") for r in result.responses)


async def test_buffered_response_rewrite_restates_content_length(envoy: ExtProcClient) -> None:
    response = b'{"id":"1","model":"short","choices":[]}'
    result = await envoy.exchange(completion(), buffered=True, headers={"x-gateway-model-name-rewrite": "short"},
                                  response_headers={"content-type": "application/json"}, response_chunks=[response])
    reply = result.responses[-1].response_body.response
    assert orjson.loads(reply.body_mutation.body)["model"] == MODEL
    lengths = {h.header.key: h.header.raw_value for h in reply.header_mutation.set_headers}
    assert lengths["content-length"] == str(len(reply.body_mutation.body)).encode()


async def test_streamed_response_mode_passes_bodies_unchanged(envoy: ExtProcClient) -> None:
    response = b'{"id":"1","model":"short","choices":[]}'
    result = await envoy.exchange(completion(), headers={"x-gateway-model-name-rewrite": "short"},
                                  response_mode=modes.ProcessingMode.STREAMED,
                                  response_headers={"content-type": "application/json"}, response_chunks=[response])
    reply = result.responses[-1].response_body.response
    assert not reply.HasField("body_mutation")  # length cannot change after headers left


async def test_plain_errors_answer_the_go_epps_exact_text_body(start_picker: PickerFactory) -> None:
    picker = await start_picker(plain_errors=True)
    async with ExtProcClient(f"127.0.0.1:{picker.grpc_port}") as envoy:
        result = await envoy.exchange(orjson.dumps({"prompt": "hi"}))
    assert result.status == 400 and result.immediate is not None
    assert result.immediate.body.decode() == f"inference error: BadRequest - {MISSING_MODEL_MESSAGE}"
    types = {h.header.key: h.header.raw_value.decode() for h in result.immediate.headers.set_headers}
    assert types["content-type"] == "text/plain; charset=utf-8"
