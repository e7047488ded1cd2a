"""A minimal HTTP/1.1 keep-alive GET client for scraping metrics pages over plain http.

A general client (aiohttp) spends about half of a scrape's CPU on machinery a scrape never
needs: cookie jars, redirects, per-request header objects, connection-pool bookkeeping.
This one keeps one persistent connection per target, sends request bytes built once, and
reads the status line, the headers and then exactly ``Content-Length`` bytes or a chunked
body. Everything is bounded (headers, body), every failure is an ``HttpScrapeError`` (or
the caller's cancellation), and a connection whose state is in doubt is closed, never
reused: the next scrape opens a fresh one.
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass

__all__ = ["HttpScrapeError", "KeepAliveScraper", "ScrapeLimits", "ScrapeResponse"]

_HEADER_END = b"\r\n\r\n"
_CRLF = b"\r\n"
# Connections unused for this long are closed: endpoints leave the pool without telling
# the data source, and their sockets must not pile up.
_IDLE_CLOSE_S = 60.0


class HttpScrapeError(Exception):
    """The page could not be fetched: connection, protocol or size-limit failure."""


@dataclass(frozen=True, slots=True)
class ScrapeLimits:
    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ScrapeResponse:
    status: int
    body: bytes


class _Head:
    __slots__ = ("status", "content_length", "chunked", "keep_alive", "encoding")

    def __init__(self, raw: bytes) -> None:
        lines = raw.split(_CRLF)
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
            raise HttpScrapeError(f"malformed status line {lines[0][:80]!r}")
        self.status = int(parts[1])
        self.content_length: int | None = None
        self.chunked = False
        self.encoding = b""
        connection = b""
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(b":")
            if not sep:
                raise HttpScrapeError(f"malformed header line {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                if not value.isdigit():
                    raise HttpScrapeError(f"malformed Content-Length {value[:40]!r}")
                self.content_length = int(value)
            elif name == b"transfer-encoding":
                self.chunked = value.lower().endswith(b"chunked")
            elif name == b"connection":
                connection = value.lower()
            elif name == b"content-encoding":
                self.encoding = value.lower()
        # HTTP/1.0 closes unless asked not to; HTTP/1.1 keeps alive unless told to close.
        if parts[0] == b"HTTP/1.0":
            self.keep_alive = b"keep-alive" in connection
        else:
            self.keep_alive = b"close" not in connection
        if self.content_length is None and not self.chunked:
            self.keep_alive = False  # the body ends when the server closes


class _Connection:
    """One persistent connection to one target; one request at a time."""

    def __init__(self, host: str, port: int, request: bytes, limits: ScrapeLimits) -> None:
        self.host = host
        self.port = port
        self.request = request
        self.limits = limits
        self.lock = asyncio.Lock()
        self.last_used = 0.0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    async def get(self) -> ScrapeResponse:
        async with self.lock:
            reused = self._writer is not None and self._reader is not None and not self._reader.at_eof()
            if not reused:
                self.close()
            try:
                return await self._exchange()
            except _StaleConnection:
                if not reused:
                    raise HttpScrapeError("connection closed before a response") from None
            # A kept-alive connection the server closed while idle: one fresh attempt.
            try:
                return await self._exchange()
            except _StaleConnection:
                raise HttpScrapeError("connection closed before a response (twice)") from None

    async def _exchange(self) -> ScrapeResponse:
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(
                    self.host, self.port, limit=self.limits.max_header_bytes)
            assert self._reader is not None
            self._writer.write(self.request)
            head = _Head(await self._read_head(self._reader))
            body = _decode(await self._read_body(self._reader, head), head.encoding, self.limits.max_body_bytes)
        except BaseException as exc:
            # Cancellation (the collector's timeout) included: the stream's state is unknown.
            self.close()
            if isinstance(exc, (HttpScrapeError, _StaleConnection, asyncio.CancelledError)):
                raise
            if isinstance(exc, (OSError, asyncio.IncompleteReadError, EOFError)):
                raise HttpScrapeError(_describe(exc)) from exc
            raise
        if not head.keep_alive:
            self.close()
        return ScrapeResponse(head.status, body)

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes:
        try:
            return await reader.readuntil(_HEADER_END)
        except asyncio.LimitOverrunError:
            raise HttpScrapeError(f"response headers over the {self.limits.max_header_bytes} byte limit") from None
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _StaleConnection from None
            raise HttpScrapeError("connection closed inside the response headers") from None

    async def _read_body(self, reader: asyncio.StreamReader, head: _Head) -> bytes:
        limit = self.limits.max_body_bytes
        if head.status in (204, 304) or 100 <= head.status < 200:
            return b""
        if head.chunked:
            return await self._read_chunked(reader, limit)
        if head.content_length is not None:
            if head.content_length > limit:
                raise HttpScrapeError(f"response body of {head.content_length} bytes over the {limit} byte limit")
            try:
                return await reader.readexactly(head.content_length)
            except asyncio.IncompleteReadError as exc:
                raise HttpScrapeError(f"response body truncated: {len(exc.partial)} of "
                                      f"{head.content_length} bytes") from None
        body = await reader.read(limit + 1)
        while body and len(body) <= limit:
            more = await reader.read(limit + 1 - len(body))
            if not more:
                break
            body += more
        if len(body) > limit:
            raise HttpScrapeError(f"response body over the {limit} byte limit")
        return body

    async def _read_chunked(self, reader: asyncio.StreamReader, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        try:
            while True:
                size_line = await reader.readuntil(_CRLF)
                size_text = size_line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise HttpScrapeError(f"malformed chunk size {size_text[:40]!r}") from None
                if size == 0:
                    while await reader.readuntil(_CRLF) != _CRLF:  # trailers, ignored
                        pass
                    return b"".join(parts)
                total += size
                if total > limit:
                    raise HttpScrapeError(f"chunked response body over the {limit} byte limit")
                chunk = await reader.readexactly(size + 2)
                if not chunk.endswith(_CRLF):
                    raise HttpScrapeError("malformed chunk: no CRLF after its data")
                parts.append(chunk[:-2])
        except asyncio.IncompleteReadError:
            raise HttpScrapeError(f"chunked response body truncated after {total} bytes") from None
        except asyncio.LimitOverrunError:
            raise HttpScrapeError("malformed chunked body: a size or trailer line too long") from None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class _StaleConnection(Exception):
    """The server closed the connection before sending a byte of the response."""


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _decode(body: bytes, encoding: bytes, limit: int) -> bytes:
    # We ask for identity; a server that compresses anyway is still read, within the limit.
    if not encoding or encoding == b"identity":
        return body
    if encoding in (b"gzip", b"x-gzip", b"deflate"):
        wbits = 47 if encoding != b"deflate" else 15
        decoder = zlib.decompressobj(wbits)
        try:
            out = decoder.decompress(body, limit + 1)
        except zlib.error as exc:
            raise HttpScrapeError(f"undecodable {encoding.decode()} body: {exc}") from None
        if len(out) > limit:
            raise HttpScrapeError(f"decoded response body over the {limit} byte limit")
        return out
    raise HttpScrapeError(f"unsupported Content-Encoding {encoding[:40]!r}")


def _host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class KeepAliveScraper:
    """GETs pages over plain HTTP/1.1, one kept-alive connection per (host, port, target)."""

    def __init__(self, limits: ScrapeLimits | None = None) -> None:
        self.limits = limits or ScrapeLimits()
        self._connections: dict[tuple[str, int, str], _Connection] = {}
        self._last_sweep = 0.0

    @property
    def open_connections(self) -> int:
        return sum(1 for c in self._connections.values() if c.is_open)

    async def get(self, host: str, port: int, target: str) -> ScrapeResponse:
        """GET ``target`` (path and query) from ``host:port``; any failure is an HttpScrapeError."""
        key = (host, port, target)
        connection = self._connections.get(key)
        if connection is None:
            request = (f"GET {target} HTTP/1.1\r\nHost: {_host_header(host, port)}\r\nConnection: keep-alive\r\n"
                       f"Accept-Encoding: identity\r\nUser-Agent: epp-scrape\r\n\r\n").encode("latin-1")
            connection = self._connections[key] = _Connection(host, port, request, self.limits)
        now = asyncio.get_running_loop().time()
        connection.last_used = now
        if now - self._last_sweep > _IDLE_CLOSE_S:
            self._sweep(now)
        return await connection.get()

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        for key, connection in list(self._connections.items()):
            if now - connection.last_used > _IDLE_CLOSE_S and not connection.lock.locked():
                connection.close()
                del self._connections[key]

    async def aclose(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
