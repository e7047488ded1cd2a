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

    async def Process(self, request_iterator: AsyncIterator[pb.ProcessingRequest],  # noqa: N802
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ProcessingResponse]:
        chunks: list[bytes] = []
        async for request in request_iterator:
            kind = request.WhichOneof("request")
            if kind == "request_headers":
                if request.request_headers.end_of_stream:
                    yield messages.request_headers_response([self._next()], [], ())
            elif kind == "request_body":
                chunks.append(request.request_body.body)
                if request.request_body.end_of_stream:
                    yield messages.request_headers_response([self._next()], [], ())
                    for response in messages.streamed_body(b"".join(chunks), True, request=True):
                        yield response
            elif kind == "response_headers":
                yield messages.continue_response_headers()
            elif kind == "response_body":
                for response in messages.streamed_body(request.response_body.body,
                                                       request.response_body.end_of_stream, request=False):
                    yield response
            elif kind in ("request_trailers", "response_trailers"):
                yield messages.trailers_response(request=kind == "request_trailers")


async def serve(port: int, endpoints: list[str]) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(NoopProcessor(endpoints), server)
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
    args = parser.parse_args()
    from epp.server.cli import run_loop

    return run_loop(serve(args.port, args.endpoints.split(","))) or 0


if __name__ == "__main__":
    sys.exit(main())
