"""A model server's ``/metrics`` page on a free loopback port, for tests of scraping and routing.

Subclass ``MetricsPage`` and override ``render`` (the page text, or a whole response for
failures), or pass the page text to the constructor. ``start``/``stop`` (or ``async with``)
bind and release the port; ``scrapes`` counts the GETs served.
"""

from __future__ import annotations

from typing import Self

from aiohttp import web

__all__ = ["MetricsPage"]


class MetricsPage:
    def __init__(self, page: str = "") -> None:
        self.page = page
        self.port = 0
        self.scrapes = 0
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def render(self) -> str | web.Response:
        """What the next scrape gets; ``self.scrapes`` already counts it."""
        return self.page

    async def _metrics(self, _: web.Request) -> web.Response:
        self.scrapes += 1
        page = self.render()
        return page if isinstance(page, web.Response) else web.Response(text=page, content_type="text/plain")

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # aiohttp has no public port

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
