"""The keep-alive scrape client against scripted loopback servers: every odd answer a model
server (or something squatting on its port) can give ends in a page or an HttpScrapeError,
and no socket is left open behind it."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from epp.datalayer.httpscrape import HttpScrapeError, KeepAliveScraper, ScrapeLimits
from epp.testing.waiting import eventually

PAGE = b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 3\n"

# A reply script: given the request number on its connection (0, 1, ...), the bytes to send
# and whether to close the connection afterwards. ``None`` bytes: send nothing, hang.
Reply = Callable[[int], tuple[bytes | None, bool]]


def ok(body: bytes = PAGE, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def chunked(body: bytes, pieces: int = 3) -> bytes:
    size = max(1, len(body) // pieces)
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for start in range(0, len(body), size):
        piece = body[start:start + size]
        out += b"%x;ext=1\r\n%s\r\n" % (len(piece), piece)
    return out + b"0\r\nX-Trailer: t\r\n\r\n"


class ScriptedServer:
    """Answers each GET with the script's bytes; counts connections accepted and still open."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.accepted = 0
        self.open = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._hung: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        try:
            for number in range(100):
                try:
                    request = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.requests.append(request)
                data, close = self.reply(number)
                if data is None:
                    # Hang until the client gives up and closes its end.
                    await reader.read()
                    return
                writer.write(data)
                await writer.drain()
                if close:
                    return
        finally:
            self.open -= 1
            writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()


Serve = Callable[[Reply], Awaitable[ScriptedServer]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[ScriptedServer] = []

    async def start(reply: Reply) -> ScriptedServer:
        server = ScriptedServer(reply)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


async def no_leak(scraper: KeepAliveScraper, server: ScriptedServer, kept: int = 0) -> None:
    """The client holds at most ``kept`` connections, and the server sees all others closed."""
    assert scraper.open_connections == kept
    await eventually(lambda: server.open == kept, timeout=5, what=f"server connections down to {kept}")


async def test_keep_alive_reuses_one_connection_and_sends_the_request_once_built(serve: Serve) -> None:
    server = await serve(lambda n: (ok(), False))
    scraper = KeepAliveScraper()
    for _ in range(5):
        response = await scraper.get("127.0.0.1", server.port, "/metrics?name[]=a")
        assert (response.status, response.body) == (200, PAGE)
    assert server.accepted == 1
    assert server.requests[0] == (b"GET /metrics?name[]=a HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: keep-alive\r\n"
                                  b"Accept-Encoding: identity\r\nUser-Agent: epp-scrape\r\n\r\n" % server.port)
    assert len(set(server.requests)) == 1
    await no_leak(scraper, server, kept=1)
    await scraper.aclose()
    await no_leak(scraper, server)


async def test_a_chunked_body_is_reassembled(serve: Serve) -> None:
    body = PAGE * 50
    server = await serve(lambda n: (chunked(body, pieces=7), False))
    scraper = KeepAliveScraper()
    for _ in range(3):
        assert (await scraper.get("127.0.0.1", server.port, "/metrics")).body == body
    assert server.accepted == 1
    await scraper.aclose()
    await no_leak(scraper, server)


async def test_connection_close_from_the_server_reconnects_on_the_next_scrape(serve: Serve) -> None:
    server = await serve(lambda n: (ok(extra=b"Connection: close\r\n"), True))
    scraper = KeepAliveScraper()
    for _ in range(3):
        assert (await scraper.get("127.0.0.1", server.port, "/metrics")).body == PAGE
    assert server.accepted == 3
    await no_leak(scraper, server)


async def test_a_server_that_closes_an_idle_keep_alive_connection_is_retried_fresh(serve: Serve) -> None:
    # Answers once with keep-alive, then drops the connection without a word (an idle timeout).
    server = await serve(lambda n: (ok(), True))
    scraper = KeepAliveScraper()
    assert (await scraper.get("127.0.0.1", server.port, "/metrics")).body == PAGE
    await eventually(lambda: server.open == 0, what="server closed the idle connection")
    assert (await scraper.get("127.0.0.1", server.port, "/metrics")).body == PAGE
    assert server.accepted == 2
    await scraper.aclose()
    await no_leak(scraper, server)


async def test_a_server_that_closes_without_answering_a_fresh_connection_is_an_error(serve: Serve) -> None:
    server = await serve(lambda n: (b"", True))
    scraper = KeepAliveScraper()
    with pytest.raises(HttpScrapeError, match="connection closed before a response"):
        await scraper.get("127.0.0.1", server.port, "/metrics")
    await no_leak(scraper, server)


async def test_a_404_is_returned_with_its_status_and_the_connection_kept(serve: Serve) -> None:
    server = await serve(lambda n: (b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found", False))
    scraper = KeepAliveScraper()
    for _ in range(2):
        response = await scraper.get("127.0.0.1", server.port, "/metrics")
        assert (response.status, response.body) == (404, b"not found")
    assert server.accepted == 1
    await scraper.aclose()
    await no_leak(scraper, server)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        pytest.param(ok()[:-10], "response body truncated", id="truncated content-length body"),
        pytest.param(chunked(PAGE)[:-20], "chunked response body truncated", id="truncated chunked body"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Len", "connection closed inside the response headers",
                     id="truncated headers"),
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "malformed status line", id="not http"),
        pytest.param(b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", "malformed status line", id="bad status code"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "malformed Content-Length",
                     id="bad content-length"),
        pytest.param(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line", id="bad header line"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size",
                     id="bad chunk size"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcde\r\n0\r\n\r\n",
                     "no CRLF after its data", id="chunk longer than its size"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx",
                     "unsupported Content-Encoding", id="unsupported encoding"),
    ],
)
async def test_broken_answers_are_scrape_errors_and_close_the_connection(serve: Serve, answer: bytes,
                                                                           error: str) -> None:
    server = await serve(lambda n: (answer, True))
    scraper = KeepAliveScraper()
    with pytest.raises(HttpScrapeError, match=error):
        await scraper.get("127.0.0.1", server.port, "/metrics")
    await no_leak(scraper, server)


async def test_after_an_error_the_next_scrape_opens_a_fresh_connection(serve: Serve) -> None:
    server = await serve(lambda n: (b"garbage\r\n\r\n", False) if n == 0 else (ok(), False))
    scraper = KeepAliveScraper()
    with pytest.raises(HttpScrapeError):
        await scraper.get("127.0.0.1", server.port, "/metrics")
    # The scripted server answers garbage to the first request on each connection.
    with pytest.raises(HttpScrapeError):
        await scraper.get("127.0.0.1", server.port, "/metrics")
    assert server.accepted == 2
    await no_leak(scraper, server)


async def test_oversized_headers_name_the_limit(serve: Serve) -> None:
    huge = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 2000 + b"\r\nContent-Length: 0\r\n\r\n"
    server = await serve(lambda n: (huge, False))
    scraper = KeepAliveScraper(ScrapeLimits(max_header_bytes=1024))
    with pytest.raises(HttpScrapeError, match="headers over the 1024 byte limit"):
        await scraper.get("127.0.0.1", server.port, "/metrics")
    await no_leak(scraper, server)


@pytest.mark.parametrize("answer", [ok(PAGE * 100), chunked(PAGE * 100),
                                    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + PAGE * 100],
                         ids=["content-length", "chunked", "until close"])
async def test_oversized_bodies_name_the_limit(serve: Serve, answer: bytes) -> None:
    server = await serve(lambda n: (answer, True))
    scraper = KeepAliveScraper(ScrapeLimits(max_body_bytes=1000))
    with pytest.raises(HttpScrapeError, match="over the 1000 byte limit"):
        await scraper.get("127.0.0.1", server.port, "/metrics")
    await no_leak(scraper, server)


async def test_a_body_read_until_close_is_accepted_within_the_limit(serve: Serve) -> None:
    server = await serve(lambda n: (b"HTTP/1.0 200 OK\r\n\r\n" + PAGE, True))
    scraper = KeepAliveScraper()
    assert (await scraper.get("127.0.0.1", server.port, "/metrics")).body == PAGE
    await no_leak(scraper, server)


async def test_a_gzip_body_sent_anyway_is_decoded(serve: Serve) -> None:
    server = await serve(lambda n: (ok(gzip.compress(PAGE), b"Content-Encoding: gzip\r\n"), False))
    scraper = KeepAliveScraper()
    assert (await scraper.get("127.0.0.1", server.port, "/metrics")).body == PAGE
    await scraper.aclose()
    await no_leak(scraper, server)


async def test_a_hung_server_is_cut_by_the_callers_timeout_and_the_connection_closed(serve: Serve) -> None:
    server = await serve(lambda n: (None, False))
    scraper = KeepAliveScraper()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await scraper.get("127.0.0.1", server.port, "/metrics")
    await no_leak(scraper, server)


async def test_a_hung_body_is_cut_by_the_callers_timeout_too(serve: Serve) -> None:
    # Headers promise 100 bytes, 10 arrive, then nothing: readexactly waits until cancelled.
    server = await serve(lambda n: (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", False))
    scraper = KeepAliveScraper()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await scraper.get("127.0.0.1", server.port, "/metrics")
    await no_leak(scraper, server)


async def test_nothing_listening_is_a_scrape_error() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    scraper = KeepAliveScraper()
    with pytest.raises(HttpScrapeError):
        await scraper.get("127.0.0.1", port, "/metrics")
    assert scraper.open_connections == 0


async def test_concurrent_scrapes_of_one_target_are_serialised_on_its_connection(serve: Serve) -> None:
    server = await serve(lambda n: (ok(b"page %d\n" % n), False))
    scraper = KeepAliveScraper()
    bodies = await asyncio.gather(*(scraper.get("127.0.0.1", server.port, "/metrics") for _ in range(4)))
    assert sorted(r.body for r in bodies) == [b"page 0\n", b"page 1\n", b"page 2\n", b"page 3\n"]
    assert server.accepted == 1
    await scraper.aclose()
    await no_leak(scraper, server)
