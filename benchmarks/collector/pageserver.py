"""A static ``/metrics`` page on many loopback ports, in its own process (run by ``benchmarks.collector``).

A bare asyncio protocol with the response prebuilt, not an aiohttp app: on a 2-core machine
every cycle this server spends is taken from the picker being measured, so it does as little
as HTTP/1.1 keep-alive allows. ``GET /count`` answers the number of pages served so far.

    python -m benchmarks.collector.pageserver PAGE_FILE COUNT PORTS_FILE
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path


class _Counter:
    served = 0


def _response(body: bytes, content_type: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nConnection: keep-alive\r\n\r\n" + body)


class _PageProtocol(asyncio.Protocol):
    def __init__(self, page: bytes, counter: _Counter) -> None:
        self.page = page
        self.counter = counter
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        # Requests carry no body (GET), so each header block ends one request.
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            request, self.buffer = self.buffer[:end], self.buffer[end + 4:]
            if request.startswith(b"GET /count "):
                self.transport.write(_response(str(self.counter.served).encode(), b"text/plain"))
            else:
                self.counter.served += 1
                self.transport.write(self.page)


async def serve(page_file: Path, count: int, ports_file: Path) -> None:
    page = _response(page_file.read_bytes(), b"text/plain; version=0.0.4; charset=utf-8")
    counter = _Counter()
    loop = asyncio.get_running_loop()
    ports = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        ports.append(sock.getsockname()[1])
        await loop.create_server(lambda: _PageProtocol(page, counter), sock=sock, backlog=64)
    tmp = ports_file.with_suffix(".tmp")
    tmp.write_text("\n".join(map(str, ports)) + "\n")
    tmp.rename(ports_file)  # the parent reads the file only once it is complete
    print(f"page server ready on {count} ports", flush=True)
    await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])))
