"""The picker ends each ext_proc stream itself, with OK, once Envoy's last message is answered.

Envoy closes an ext_proc stream by half-closing it and resetting it at once; grpc.aio leaks
native memory for each batch that fails on a call reset that way (grpc/grpc#43360), so a
stream the picker leaves open until Envoy's reset costs RSS on every request (the soak run's
linear growth). These tests play Envoy and never half-close: the stream must still end.
"""

from __future__ import annotations

import asyncio

import grpc
import orjson

from epp.server.app import PickerServer
from epp.testing import ExtProcClient
from epp.testing.envoy_stream import (
    ScriptedStream,
    body_message,
    request_headers_message,
    response_headers_message,
    trailers_message,
)

HEADERS = [(":method", b"POST"), (":path", b"/v1/completions"), (":authority", b"gateway"),
           ("content-type", b"application/json")]
BODY = orjson.dumps({"model": "m", "prompt": "Hello there"})


async def routed_stream(stream: ScriptedStream) -> None:
    await stream.send(request_headers_message(HEADERS))
    await stream.send(body_message(BODY, end_of_stream=True))
    assert await stream.wait_for(lambda r: r.HasField("request_headers")) is not None


async def ended_by_picker(stream: ScriptedStream) -> grpc.StatusCode:
    await asyncio.wait_for(stream.ended.wait(), 5.0)
    code: grpc.StatusCode = await stream._call.code()
    return code


async def test_stream_ends_with_ok_after_last_response_chunk_so_envoy_reset_leaks_nothing(
        picker: PickerServer) -> None:
    async with ExtProcClient(f"127.0.0.1:{picker.grpc_port}") as envoy, envoy.stream() as stream:
        await routed_stream(stream)
        await stream.send(response_headers_message({"content-type": "application/json"}))
        await stream.send(body_message(b'{"choices": []}', end_of_stream=True, request=False))

        assert await ended_by_picker(stream) == grpc.StatusCode.OK
        last = stream.result.bodies(request=False)[-1]
        assert last.body == b'{"choices": []}' and last.end_of_stream


async def test_stream_ends_with_ok_after_response_headers_that_end_the_response(picker: PickerServer) -> None:
    async with ExtProcClient(f"127.0.0.1:{picker.grpc_port}") as envoy, envoy.stream() as stream:
        await routed_stream(stream)
        await stream.send(response_headers_message({}, end_of_stream=True))

        assert await ended_by_picker(stream) == grpc.StatusCode.OK
        assert any(r.HasField("response_headers") for r in stream.result.responses)


async def test_stream_ends_with_ok_after_response_trailers(picker: PickerServer) -> None:
    async with ExtProcClient(f"127.0.0.1:{picker.grpc_port}") as envoy, envoy.stream() as stream:
        await routed_stream(stream)
        await stream.send(response_headers_message({"content-type": "application/grpc"}))
        await stream.send(body_message(b"partial", end_of_stream=False, request=False))
        await stream.send(trailers_message(request=False))

        assert await ended_by_picker(stream) == grpc.StatusCode.OK
        assert stream.result.responses[-1].HasField("response_trailers")


async def test_stream_stays_open_while_the_response_goes_on(picker: PickerServer) -> None:
    async with ExtProcClient(f"127.0.0.1:{picker.grpc_port}") as envoy, envoy.stream() as stream:
        await routed_stream(stream)
        await stream.send(response_headers_message({"content-type": "text/event-stream"}))
        await stream.send(body_message(b"data: a\n\n", end_of_stream=False, request=False))
        assert await stream.wait_for(lambda r: r.HasField("response_body")) is not None
        assert not stream.ended.is_set()

        assert await stream.send(body_message(b"data: [DONE]\n\n", end_of_stream=True, request=False))
        assert await ended_by_picker(stream) == grpc.StatusCode.OK
        assert [b.body for b in stream.result.bodies(request=False)] == [b"data: a\n\n", b"data: [DONE]\n\n"]
