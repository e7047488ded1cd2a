"""The fast config's two streams, played against an in-process picker.

The routing stream (gRPC metadata ``x-epp-response-path: observed``) gets its destination
with a mode override that turns the response off and is then ended by the picker; the
observation stream (messages flagged ``observability_mode``) brings the response, which
the picker follows by ``x-request-id`` and never answers.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence

import grpc
import orjson
import pytest
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as modes
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from prometheus_client import generate_latest

from epp.server import extproc
from epp.server.app import PickerServer
from epp.testing.envoy_stream import body_message, request_headers_message, response_headers_message

OBSERVED = (extproc.RESPONSE_PATH_METADATA,)
MODEL = "m"
BODY = orjson.dumps({"model": MODEL, "prompt": "Hello there", "stream": True})
SSE = [b'data: {"choices": [{"text": "a"}]}\n\n', b'data: {"choices": [{"text": "b"}]}\n\n',
       b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}\n\n'
       b"data: [DONE]\n\n"]


def request_headers(request_id: str, extra: Sequence[tuple[str, bytes]] = ()) -> pb.ProcessingRequest:
    return request_headers_message([(":method", b"POST"), (":path", b"/v1/completions"), (":authority", b"gw"),
                                    ("content-type", b"application/json"), ("x-request-id", request_id.encode()),
                                    *extra])


Answers = list[pb.ProcessingResponse]


def observed(message: pb.ProcessingRequest) -> pb.ProcessingRequest:
    message.observability_mode = True
    return message


@pytest.fixture
async def stub(picker: PickerServer) -> AsyncIterator[pb_grpc.ExternalProcessorStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{picker.grpc_port}") as channel:
        yield pb_grpc.ExternalProcessorStub(channel)


async def read_all(call: grpc.aio.StreamStreamCall) -> Answers:
    """Every answer until the picker ends the stream (read API: the call was written to)."""
    answers: list[pb.ProcessingResponse] = []
    for _ in range(100):
        answer = await call.read()
        if answer is grpc.aio.EOF:
            return answers
        answers.append(answer)
    raise AssertionError("the picker never ended the stream")


def metric(picker: PickerServer, name: str) -> float:
    text = generate_latest(picker.metrics.registry).decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


async def route(stub: pb_grpc.ExternalProcessorStub, request_id: str, metadata: object = OBSERVED,
                extra: Sequence[tuple[str, bytes]] = ()) -> tuple[grpc.aio.StreamStreamCall, Answers]:
    """Send one request; returns the call and the answers up to the destination's body."""
    call = stub.Process(metadata=metadata)
    await call.write(request_headers(request_id, extra))
    await call.write(body_message(BODY, end_of_stream=True))
    answers: list[pb.ProcessingResponse] = []
    while not (answers and answers[-1].request_body.response.body_mutation.streamed_response.end_of_stream):
        answer = await call.read()
        assert answer is not grpc.aio.EOF
        answers.append(answer)
    return call, answers


async def observe(stub: pb_grpc.ExternalProcessorStub, request_id: str, chunks: Sequence[bytes] = tuple(SSE),
                  end: bool = True) -> list[pb.ProcessingResponse]:
    """Play Envoy's observe filter; returns what the picker answered (it never should)."""
    call = stub.Process()
    await call.write(observed(request_headers(request_id)))
    await call.write(observed(response_headers_message({"content-type": "text/event-stream"})))
    for i, chunk in enumerate(chunks):
        await call.write(observed(body_message(chunk, end_of_stream=end and i == len(chunks) - 1, request=False)))
    if not end:
        await call.done_writing()
    answers = await read_all(call)
    assert await call.code() == grpc.StatusCode.OK
    return answers


async def test_the_routed_request_is_handed_to_its_observation_and_released_there(
        picker: PickerServer, stub: pb_grpc.ExternalProcessorStub) -> None:
    call, answers = await route(stub, "req-1")
    override = answers[0].mode_override
    assert answers[0].request_headers.response.header_mutation.set_headers  # the destination
    assert (override.response_header_mode, override.response_body_mode, override.response_trailer_mode) == (
        modes.ProcessingMode.SKIP, modes.ProcessingMode.NONE, modes.ProcessingMode.SKIP)
    assert await call.read() is grpc.aio.EOF  # the picker ended the routing stream: nothing left to cut
    assert await call.code() == grpc.StatusCode.OK
    assert metric(picker, "inference_objective_running_requests") == 1

    assert await observe(stub, "req-1") == []
    assert metric(picker, "inference_objective_running_requests") == 0
    assert metric(picker, "inference_objective_request_ttft_seconds_count") == 1
    assert metric(picker, "inference_objective_output_tokens_sum") == 2
    assert metric(picker, "inference_objective_input_tokens_sum") == 3


async def test_without_the_metadata_the_routing_stream_keeps_the_response_as_the_gie_protocol_says(
        picker: PickerServer, stub: pb_grpc.ExternalProcessorStub) -> None:
    call, answers = await route(stub, "req-std", metadata=None)
    assert not any(answer.HasField("mode_override") for answer in answers)
    await call.write(response_headers_message({"content-type": "text/event-stream"}))
    await call.write(body_message(SSE[0], end_of_stream=True, request=False))
    rest = await read_all(call)
    assert rest[-1].response_body.response.body_mutation.streamed_response.body == SSE[0]
    assert metric(picker, "inference_objective_running_requests") == 0
    assert metric(picker, "inference_objective_request_ttft_seconds_count") == 1


async def test_an_observation_cut_short_releases_the_request_without_counting_it_complete(
        picker: PickerServer, stub: pb_grpc.ExternalProcessorStub) -> None:
    await route(stub, "req-gone")
    assert metric(picker, "inference_objective_running_requests") == 1
    await observe(stub, "req-gone", chunks=SSE[:1], end=False)  # the client left: Envoy closed the observation
    assert metric(picker, "inference_objective_running_requests") == 0
    assert metric(picker, "inference_objective_request_duration_seconds_count") == 0


async def test_an_observation_that_opens_first_waits_for_its_request(
        picker: PickerServer, stub: pb_grpc.ExternalProcessorStub) -> None:
    call = stub.Process()
    await call.write(observed(request_headers("req-early")))
    await route(stub, "req-early")
    await call.write(observed(response_headers_message({"content-type": "text/event-stream"})))
    await call.write(observed(body_message(SSE[-1], end_of_stream=True, request=False)))
    assert await read_all(call) == []
    assert metric(picker, "inference_objective_running_requests") == 0
    assert metric(picker, "inference_objective_output_tokens_sum") == 2


async def test_an_observation_of_a_request_this_picker_never_routed_is_ignored(
        picker: PickerServer, stub: pb_grpc.ExternalProcessorStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extproc, "OBSERVATION_GRACE_SECONDS", 0.05)
    assert await observe(stub, "routed-elsewhere") == []
    assert metric(picker, "inference_objective_request_ttft_seconds_count") == 0


async def test_a_rewritten_response_stays_on_the_routing_stream_and_its_observation_is_turned_away(
        picker: PickerServer, stub: pb_grpc.ExternalProcessorStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extproc, "OBSERVATION_GRACE_SECONDS", 3600.0)  # turned away at once, not after a wait
    call, answers = await route(stub, "req-rw", extra=[("x-gateway-model-name-rewrite", b"lora")])
    assert not any(answer.HasField("mode_override") for answer in answers)
    # The picker ends the observation at its first message; what Envoy sends after that
    # cannot be written any more, so only the headers are sent here.
    observation = stub.Process()
    await observation.write(observed(request_headers("req-rw")))
    assert await read_all(observation) == []
    assert await observation.code() == grpc.StatusCode.OK
    await call.write(response_headers_message({"content-type": "application/json"}))
    await call.write(body_message(b'{"model":"lora","choices":[]}', end_of_stream=True, request=False))
    rest = await read_all(call)
    assert rest[-1].response_body.response.body_mutation.streamed_response.body == b'{"model":"m","choices":[]}'
    assert metric(picker, "inference_objective_running_requests") == 0


async def test_requests_sharing_an_id_are_each_observed_once(
        picker: PickerServer, stub: pb_grpc.ExternalProcessorStub) -> None:
    await route(stub, "same")
    await route(stub, "same")
    assert metric(picker, "inference_objective_running_requests") == 2
    await observe(stub, "same")
    assert metric(picker, "inference_objective_running_requests") == 1
    await observe(stub, "same")
    assert metric(picker, "inference_objective_running_requests") == 0
    assert metric(picker, "inference_objective_request_ttft_seconds_count") == 2
