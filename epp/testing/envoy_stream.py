"""Act as Envoy on an ext_proc stream: send a scripted request/response, collect the answers.

``ExtProcClient.exchange`` opens one gRPC stream (one HTTP request), sends request headers,
body chunks, and optionally response headers and body chunks, the way Envoy does in
FULL_DUPLEX_STREAMED (or BUFFERED) mode, and returns every ``ProcessingResponse`` with
helpers to read the destination, mutations and immediate responses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from envoy.config.core.v3 import base_pb2 as core
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as modes
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2

__all__ = ["ExtProcClient", "ScriptedStream", "StreamResult", "body_message", "request_headers_message", "routed_to",
           "response_headers_message", "trailers_message"]

_FULL_DUPLEX = modes.ProcessingMode.FULL_DUPLEX_STREAMED
_BUFFERED = modes.ProcessingMode.BUFFERED


@dataclass
class StreamResult:
    responses: list[pb.ProcessingResponse] = field(default_factory=list)

    @property
    def immediate(self) -> pb.ImmediateResponse | None:
        for r in self.responses:
            if r.HasField("immediate_response"):
                return r.immediate_response
        return None

    @property
    def status(self) -> int | None:
        imm = self.immediate
        return None if imm is None else int(imm.status.code)

    def _header_mutation(self) -> pb.HeaderMutation | None:
        for r in self.responses:
            if r.HasField("request_headers") and r.request_headers.response.HasField("header_mutation"):
                return r.request_headers.response.header_mutation
            if r.HasField("request_body") and r.request_body.response.HasField("header_mutation"):
                return r.request_body.response.header_mutation
        return None

    @property
    def set_headers(self) -> dict[str, str]:
        mutation = self._header_mutation()
        if mutation is None:
            return {}
        return {h.header.key: (h.header.raw_value.decode() or h.header.value) for h in mutation.set_headers}

    @property
    def removed_headers(self) -> list[str]:
        mutation = self._header_mutation()
        return [] if mutation is None else list(mutation.remove_headers)

    @property
    def destination(self) -> str | None:
        return self.set_headers.get("x-gateway-destination-endpoint")

    @property
    def metadata_destination(self) -> str | None:
        for r in self.responses:
            lb = r.dynamic_metadata.fields.get("envoy.lb")
            if lb is not None:
                return lb.struct_value.fields["x-gateway-destination-endpoint"].string_value
        return None

    def bodies(self, request: bool) -> list[pb.StreamedBodyResponse]:
        name = "request_body" if request else "response_body"
        return [getattr(r, name).response.body_mutation.streamed_response for r in self.responses
                if r.HasField(name) and getattr(r, name).response.body_mutation.HasField("streamed_response")]

    def body(self, request: bool) -> bytes:
        return b"".join(chunk.body for chunk in self.bodies(request))


def _headers(headers: Mapping[str, str], end_of_stream: bool) -> pb.HttpHeaders:
    return pb.HttpHeaders(
        headers=core.HeaderMap(headers=[core.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]),
        end_of_stream=end_of_stream)


class ExtProcClient:
    """A gRPC client that plays Envoy's part of the ext_proc protocol."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = pb_grpc.ExternalProcessorStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> ExtProcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def stream(self) -> ScriptedStream:
        """A new stream to drive message by message (``ScriptedStream``)."""
        return ScriptedStream(self)

    async def exchange(
        self,
        body: bytes | None,
        *,
        path: str = "/v1/completions",
        headers: Mapping[str, str] | None = None,
        chunks: int = 1,
        buffered: bool = False,
        subset: Sequence[str] | None = None,
        response_headers: Mapping[str, str] | None = None,
        response_chunks: Sequence[bytes] = (),
        request_trailers: bool = False,
        abort_after_request: bool = False,
        request_mode: int | None = None,
        response_mode: int | None = None,
        timeout: float = 10.0,
    ) -> StreamResult:
        """Run one request through the picker; ``body=None`` sends a headers-only request."""
        all_headers = {":method": "POST" if body is not None else "GET", ":path": path, ":authority": "gateway",
                       "content-type": "application/json", **(headers or {})}
        mode = _BUFFERED if buffered else _FULL_DUPLEX
        first = pb.ProcessingRequest(request_headers=_headers(all_headers, body is None),
                                     protocol_config=pb.ProtocolConfiguration(
                                         request_body_mode=mode if request_mode is None else request_mode,
                                         response_body_mode=mode if response_mode is None else response_mode))
        if subset is not None:
            hint = struct_pb2.Struct()
            hint.fields["x-gateway-destination-endpoint-subset"].list_value.extend(list(subset))
            first.metadata_context.filter_metadata["envoy.lb.subset_hint"].CopyFrom(hint)
        result = StreamResult()
        call = self.stub.Process()
        changed = asyncio.Event()
        finished = asyncio.Event()

        async def reader() -> None:
            # Read concurrently with writing, as Envoy does, so an early immediate
            # response is seen even while request chunks are still being sent.
            try:
                while (response := await call.read()) is not grpc.aio.EOF:
                    result.responses.append(response)
                    changed.set()
            except (grpc.aio.AioRpcError, asyncio.CancelledError):
                pass
            finally:
                finished.set()
                changed.set()

        reading = asyncio.create_task(reader())
        seen = 0

        async def read_until(predicate: object, deadline: float) -> None:
            nonlocal seen
            while True:
                while seen < len(result.responses):
                    response = result.responses[seen]
                    seen += 1
                    if response.HasField("immediate_response") or predicate(response):  # type: ignore[operator]
                        return
                if finished.is_set():
                    return
                changed.clear()
                await asyncio.wait_for(changed.wait(), max(0.01, deadline - asyncio.get_running_loop().time()))

        async def write(message: pb.ProcessingRequest) -> bool:
            try:
                await call.write(message)
                return True
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await asyncio.wait_for(finished.wait(), timeout)  # the picker ended the stream early
                return False

        deadline = asyncio.get_running_loop().time() + timeout
        await write(first)
        if body is None:
            await read_until(lambda r: r.HasField("request_headers"), deadline)
        else:
            if buffered:
                await read_until(lambda r: r.HasField("request_headers"), deadline)
                if result.immediate is None:
                    await write(pb.ProcessingRequest(request_body=pb.HttpBody(body=body,
                                                                              end_of_stream=not request_trailers)))
                    await read_until(lambda r: r.HasField("request_body"), deadline)
                if request_trailers and result.immediate is None:
                    await write(pb.ProcessingRequest(request_trailers=pb.HttpTrailers()))
                    await read_until(lambda r: r.HasField("request_trailers"), deadline)
            else:
                size = max(1, -(-len(body) // chunks))
                pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
                for i, piece in enumerate(pieces):
                    last = i == len(pieces) - 1 and not request_trailers
                    if not await write(pb.ProcessingRequest(request_body=pb.HttpBody(body=piece, end_of_stream=last))):
                        break
                if request_trailers and result.immediate is None:
                    await write(pb.ProcessingRequest(request_trailers=pb.HttpTrailers()))
                    await read_until(lambda r: r.HasField("request_trailers"), deadline)
                else:
                    await read_until(lambda r: r.HasField("request_body")
                                     and r.request_body.response.body_mutation.streamed_response.end_of_stream,
                                     deadline)
        if result.immediate is not None or abort_after_request:
            call.cancel()
            await reading
            return result
        if response_headers is not None:
            await write(pb.ProcessingRequest(response_headers=_headers({":status": "200", **response_headers},
                                                                        not response_chunks)))
            await read_until(lambda r: r.HasField("response_headers"), deadline)
            for i, chunk in enumerate(response_chunks):
                last = i == len(response_chunks) - 1
                await write(pb.ProcessingRequest(response_body=pb.HttpBody(body=chunk, end_of_stream=last)))
                await read_until(lambda r: r.HasField("response_body"), deadline)
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.done_writing()
        await asyncio.wait_for(reading, max(0.01, deadline - asyncio.get_running_loop().time()))
        return result


async def routed_to(address: str, model: str = "m") -> str | None:
    """Where the picker at ``address`` routes one small completion request (one stream, then closed)."""
    body = b'{"model": "%s", "prompt": "hello", "max_tokens": 1}' % model.encode()
    async with ExtProcClient(address) as envoy:
        result = await envoy.exchange(body)
    return result.destination


def request_headers_message(headers: Sequence[tuple[str, bytes]], end_of_stream: bool = False,
                            request_mode: int = _FULL_DUPLEX, response_mode: int = _FULL_DUPLEX
                            ) -> pb.ProcessingRequest:
    """Request headers as raw key/value pairs (repeated keys and non-UTF-8 values allowed)."""
    header_map = core.HeaderMap(headers=[core.HeaderValue(key=k, raw_value=v) for k, v in headers])
    return pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map, end_of_stream=end_of_stream),
                                protocol_config=pb.ProtocolConfiguration(request_body_mode=request_mode,
                                                                         response_body_mode=response_mode))


def response_headers_message(headers: Mapping[str, str], end_of_stream: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_headers=_headers({":status": "200", **headers}, end_of_stream))


def body_message(chunk: bytes, end_of_stream: bool, request: bool = True) -> pb.ProcessingRequest:
    body = pb.HttpBody(body=chunk, end_of_stream=end_of_stream)
    return pb.ProcessingRequest(request_body=body) if request else pb.ProcessingRequest(response_body=body)


def trailers_message(request: bool = True) -> pb.ProcessingRequest:
    trailers = pb.HttpTrailers()
    return pb.ProcessingRequest(request_trailers=trailers) if request else pb.ProcessingRequest(
        response_trailers=trailers)


class ScriptedStream:
    """One ext_proc stream driven message by message, for tests that look between messages.

    ``send`` writes a message (False once the picker has ended the stream), ``wait_for``
    waits for a response matching a predicate, ``close`` half-closes like Envoy at the end
    of a request and waits for the picker to end the stream, ``abort`` resets it like a
    client that went away. Responses are read concurrently, as Envoy does.
    """

    def __init__(self, client: ExtProcClient) -> None:
        self.result = StreamResult()
        self._call = client.stub.Process()
        self._changed = asyncio.Event()
        self.ended = asyncio.Event()
        self._reading = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while (response := await self._call.read()) is not grpc.aio.EOF:
                self.result.responses.append(response)
                self._changed.set()
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            self.ended.set()
            self._changed.set()

    async def send(self, message: pb.ProcessingRequest) -> bool:
        if self.ended.is_set():
            return False
        try:
            await self._call.write(message)
            return True
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return False

    async def wait_for(self, predicate: Callable[[pb.ProcessingResponse], bool], timeout: float = 5.0
                       ) -> pb.ProcessingResponse | None:
        """The first response (in order) matching ``predicate``; None if the stream ended without one."""
        async with asyncio.timeout(timeout):
            while True:
                for response in self.result.responses:
                    if predicate(response):
                        return response
                if self.ended.is_set():
                    return None
                self._changed.clear()
                await self._changed.wait()

    async def close(self, timeout: float = 5.0) -> StreamResult:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._call.done_writing()
        await asyncio.wait_for(asyncio.shield(self._reading), timeout)
        return self.result

    async def abort(self) -> StreamResult:
        self._call.cancel()
        await self._reading
        return self.result

    async def __aenter__(self) -> ScriptedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.ended.is_set():
            await self.abort()
