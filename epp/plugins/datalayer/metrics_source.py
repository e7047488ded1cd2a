"""``metrics-data-source``: scrape each endpoint's Prometheus ``/metrics`` page.

One HTTP GET per endpoint per collector tick; the page is parsed once, for only the
series its extractors declared (``wanted_series()``), and the resulting
``ScrapedSeries`` is pushed to every extractor. Parameters: ``scheme`` (``http`` or
``https``), ``path`` (``/metrics``), ``insecureSkipVerify`` (``true``: accept any
certificate on https, as model servers usually run self-signed), ``filterSeries``
(``true``: ask for only the wanted series with ``name[]=`` query parameters, which
``prometheus_client``'s own handler honours; for vLLM use ``path: /metrics/``, whose page
then shrinks from ~50 KB to ~2 KB and costs vLLM's API process ~0.3x the CPU per scrape;
a server that ignores the query answers the whole page, which still works).

Plain ``http`` is fetched by ``epp.datalayer.httpscrape`` (one kept-alive connection per
endpoint, about a third of aiohttp's CPU per scrape); ``https`` by aiohttp. The hidden
parameter ``client: aiohttp`` forces aiohttp for http too (benchmarks compare the two).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable
from urllib.parse import quote, urlsplit

import aiohttp

from epp.datalayer.endpoint import Endpoint
from epp.datalayer.httpscrape import HttpScrapeError, KeepAliveScraper
from epp.datalayer.promtext import Sample, parse_series
from epp.framework.datalayer import Extractor
from epp.framework.params import require
from epp.framework.plugin import BasePlugin, Handle

__all__ = ["MetricsDataSource", "MetricsSourceParams", "ScrapedSeries", "SeriesConsumer"]


class ScrapedSeries(dict[str, list[Sample]]):
    """Series name → samples, for the names the extractors asked for."""


@runtime_checkable
class SeriesConsumer(Protocol):
    def wanted_series(self, endpoint: Endpoint) -> frozenset[str]:
        """Series this extractor reads for ``endpoint`` (e.g. only its engine's names)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsSourceParams:
    scheme: Literal["http", "https"] = "http"
    path: str = "/metrics"
    insecure_skip_verify: bool = True
    filter_series: bool = False
    # Not documented for users: which client fetches plain-http pages (benchmarks toggle it).
    client: Literal["native", "aiohttp"] = field(default="native", metadata={"hidden": True})

    def __post_init__(self) -> None:
        require(self.path.startswith("/"), "path", "must start with '/'", self.path)


class ScrapeError(Exception):
    """The endpoint's metrics page could not be fetched or parsed."""


class MetricsDataSource(BasePlugin):
    """Fetches each endpoint's Prometheus metrics page and parses the wanted series."""

    TYPE = "metrics-data-source"
    PARAMS = MetricsSourceParams
    params: MetricsSourceParams

    def __init__(self, name: str, params: MetricsSourceParams | None, handle: Handle) -> None:
        super().__init__(name, params or MetricsSourceParams(), handle)
        self._consumers: list[SeriesConsumer] = []
        self._session: aiohttp.ClientSession | None = None
        self._native: KeepAliveScraper | None = None
        self._split_urls: dict[str, tuple[str, int, str]] = {}
        if self.params.scheme == "http" and self.params.client == "native":
            self._native = KeepAliveScraper()

    def output_type(self) -> type:
        return ScrapedSeries

    def bind_extractors(self, extractors: list[Extractor]) -> None:
        self._consumers = [e for e in extractors if isinstance(e, SeriesConsumer)]

    def wanted_series(self, endpoint: Endpoint) -> frozenset[str]:
        wanted: frozenset[str] = frozenset()
        for consumer in self._consumers:
            wanted |= consumer.wanted_series(endpoint)
        return wanted

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily: constructors must not need a running loop.
        if self._session is None or self._session.closed:
            ssl_ctx: ssl.SSLContext | bool = True
            if self.params.scheme == "https" and self.params.insecure_skip_verify:
                ssl_ctx = False
            connector = aiohttp.TCPConnector(limit=0, ssl=ssl_ctx, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
        return self._session

    def url(self, endpoint: Endpoint) -> str:
        base = f"{self.params.scheme}://{endpoint.metadata.metrics_hostport}{self.params.path}"
        if not self.params.filter_series:
            return base
        wanted = sorted(self.wanted_series(endpoint))
        if not wanted:
            return base
        # Exact sample names: a counter's series is read as <name>_total (promtext's names).
        query = "&".join(f"name[]={quote(name, safe=':')}" for name in wanted)
        return f"{base}{'&' if '?' in base else '?'}{query}"

    async def collect(self, endpoint: Endpoint) -> ScrapedSeries:
        url = self.url(endpoint)
        payload = await (self._fetch_native(url, self._native) if self._native else self._fetch_aiohttp(url))
        try:
            return ScrapedSeries(parse_series(payload.decode("utf-8", "replace"), self.wanted_series(endpoint)))
        except ValueError as exc:
            raise ScrapeError(f"{url}: malformed metrics: {exc}") from exc

    async def _fetch_native(self, url: str, scraper: KeepAliveScraper) -> bytes:
        try:
            host, port, target = self._split(url)
            response = await scraper.get(host, port, target)
        except (HttpScrapeError, ValueError) as exc:
            raise ScrapeError(f"GET {url}: {exc}") from exc
        if response.status != 200:
            raise ScrapeError(f"GET {url}: HTTP {response.status}")
        return response.body

    def _split(self, url: str) -> tuple[str, int, str]:
        split = self._split_urls.get(url)
        if split is None:
            if len(self._split_urls) > 4096:  # endpoints come and go: keep the cache bounded
                self._split_urls.clear()
            parts = urlsplit(url)
            target = f"{parts.path}?{parts.query}" if parts.query else parts.path
            split = self._split_urls[url] = (parts.hostname or "", parts.port or 80, target)
        return split

    async def _fetch_aiohttp(self, url: str) -> bytes:
        try:
            async with self._client().get(url) as response:
                if response.status != 200:
                    raise ScrapeError(f"GET {url}: HTTP {response.status}")
                return await response.read()
        except aiohttp.ClientError as exc:
            raise ScrapeError(f"GET {url}: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._native is not None:
            await self._native.aclose()
