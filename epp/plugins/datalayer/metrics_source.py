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
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable
from urllib.parse import quote

import aiohttp

from epp.datalayer.endpoint import Endpoint
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
        try:
            async with self._client().get(self.url(endpoint)) as response:
                if response.status != 200:
                    raise ScrapeError(f"GET {self.url(endpoint)}: HTTP {response.status}")
                payload = await response.read()
        except aiohttp.ClientError as exc:
            raise ScrapeError(f"GET {self.url(endpoint)}: {exc}") from exc
        try:
            return ScrapedSeries(parse_series(payload.decode("utf-8", "replace"), self.wanted_series(endpoint)))
        except ValueError as exc:
            raise ScrapeError(f"{self.url(endpoint)}: malformed metrics: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
