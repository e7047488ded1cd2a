"""A no-op ext_proc server: the transport baseline the picker is measured against.

It speaks the same FULL_DUPLEX_STREAMED protocol with the same message builders as the
picker (headers response with a destination, request body echoed back, response body
streamed through) but decides nothing: destinations rotate round-robin. The difference
between it and the picker is the picker's own work (parsing, scheduling, plugins,
metrics), which is what the overhead benchmark reports.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys
from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp.server import messages


class NoopProcessor(pb_grpc.ExternalProcessorServicer):
    def __init__(self, endpoints: list[str]) -> None:
        self._next = itertools.cycle(endpoints).__next__

    def answer(self, request: pb.ProcessingRequest, chunks: list[bytes]) -> list[pb.ProcessingResponse]:
        kind = request.WhichOneof("request")
        if kind == "request_headers":
            if request.request_headers.end_of_stream:
                return [messages.request_headers_response([self._next()], [], ())]
        elif kind == "request_body":
            chunks.append(request.request_body.body)
            if request.request_body.end_of_stream:
                return [messages.request_headers_response([self._next()], [], ()),
                        *messages.streamed_body(b"".join(chunks), True, request=True)]
        elif kind == "response_headers":
            return [messages.continue_response_headers()]
        elif kind == "response_body":
            return messages.streamed_body(request.response_body.body, request.response_body.end_of_stream,
                                          request=False)
        elif kind in ("request_trailers", "response_trailers"):
            return [messages.trailers_response(request=kind == "request_trailers")]
        return []

    async def Process(self, request_iterator: AsyncIterator[pb.ProcessingRequest],  # noqa: N802
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ProcessingResponse]:
        chunks: list[bytes] = []
        async for request in request_iterator:
            for response in self.answer(request, chunks):
                yield response


class NoopReadWriteProcessor(NoopProcessor):
    """The same answers, read and written on the call itself rather than through async generators."""

    async def Process(self, request_iterator: AsyncIterator[pb.ProcessingRequest],  # type: ignore[override]  # noqa: N802
                      context: grpc.aio.ServicerContext) -> None:
        chunks: list[bytes] = []
        while (request := await context.read()) is not grpc.aio.EOF:
            for response in self.answer(request, chunks):
                await context.write(response)


async def serve(port: int, endpoints: list[str], api: str = "generator") -> None:
    server = grpc.aio.server()
    servicer = NoopReadWriteProcessor(endpoints) if api == "readwrite" else NoopProcessor(endpoints)
    pb_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"noop ext_proc ready on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--endpoints", required=True, help="comma-separated ip:port")
    parser.add_argument("--api", choices=["generator", "readwrite"], default="generator",
                        help="how the handler reads and writes: async generators (as grpc.aio's examples) or the call")
    args = parser.parse_args()
    from epp.server.cli import run_loop

    return run_loop(serve(args.port, args.endpoints.split(","), args.api)) or 0


if __name__ == "__main__":
    sys.exit(main())
