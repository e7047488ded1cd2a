"""A metrics source that scrapes the model servers' ``/metrics`` pages itself, without Prometheus.

One refresh scrapes every endpoint once (concurrently, at most ``max_concurrency`` at a
time) and answers all its queries from those pages, with the picker's parser
(``epp.datalayer.promtext.parse_series``, which reads only the wanted series).

Only ``type: metric`` templates are served: a metric name with optional label matchers
(``=``, ``!=``, ``=~``, ``!~``, PromQL semantics: regexes match the whole value, an absent
label is ``""``). A ``promql`` template gets an error result saying so: there is no
PromQL engine here, use ``PrometheusSource`` for it.

Every series gets the label ``instance`` = the endpoint's ``host:port``, as a Prometheus
scrape would (a page's own ``instance`` label is kept as ``exported_instance``), so
``sources.replica_of`` finds the replica either way; matchers see that label too.
Values are the samples' values (NaN stays NaN); the timestamp is the scrape time.

An endpoint that cannot be scraped (connection error, timeout, non-200, a malformed line
of a wanted series) is left out of the results and named in each result's ``warnings``;
only when no endpoint could be scraped is the result an error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx

from epp.autoscale.cache import TTLCache
from epp.autoscale.sources import CachingSource, MetricValue, QueryResult
from epp.autoscale.templates import QueryList, QueryTemplate, TemplateError
from epp.datalayer.promtext import parse_series

__all__ = ["PodScrapeSource"]


@dataclass(frozen=True, slots=True)
class _Page:
    instance: str
    text: str | None
    error: str | None
    scraped_at: float


def _endpoint_url(endpoint: str, path: str) -> tuple[str, str]:
    """``(instance, url)`` for ``host:port`` or ``http(s)://host:port``."""
    if endpoint.startswith(("http://", "https://")):
        url = httpx.URL(endpoint)
        return url.netloc.decode("ascii"), str(url.copy_with(path=path))
    if not endpoint or "/" in endpoint:
        raise ValueError(f"endpoint {endpoint!r} is not host:port or an http(s) URL")
    return endpoint, f"http://{endpoint}{path}"


class PodScrapeSource(CachingSource):
    def __init__(self, endpoints: Sequence[str], queries: QueryList, *, path: str = "/metrics",
                 timeout: float = 5.0, max_concurrency: int = 10, cache: TTLCache[QueryResult] | None = None,
                 client: httpx.AsyncClient | None = None, wall_clock: Callable[[], float] = time.time) -> None:
        super().__init__(queries, cache, wall_clock)
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', not {path!r}")
        if not timeout > 0 or max_concurrency < 1:
            raise ValueError("timeout must be positive and max_concurrency at least 1")
        self._targets = [_endpoint_url(e.strip(), path) for e in endpoints]
        self.timeout = timeout
        self._limit = asyncio.Semaphore(max_concurrency)
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout)

    @property
    def endpoints(self) -> list[str]:
        return [instance for instance, _ in self._targets]

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> PodScrapeSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _scrape(self, instance: str, url: str) -> _Page:
        async with self._limit:
            try:
                response = await self._client.get(url, timeout=self.timeout)
            except httpx.HTTPError as exc:
                return _Page(instance, None, f"{type(exc).__name__}: {exc}", self._wall_clock())
            if response.status_code != 200:
                return _Page(instance, None, f"HTTP {response.status_code}", self._wall_clock())
            return _Page(instance, response.text, None, self._wall_clock())

    async def _prepare(self, templates: list[QueryTemplate], params: Mapping[str, str]) -> object:
        if not any(t.type == "metric" for t in templates):
            return []
        return await asyncio.gather(*(self._scrape(instance, url) for instance, url in self._targets))

    async def _run(self, template: QueryTemplate, params: Mapping[str, str], prepared: object) -> QueryResult:
        if template.type != "metric":
            return self.error(template, "promql templates are not supported by the pod-scrape source "
                                        "(it has no PromQL engine); use a metric selector or PrometheusSource")
        try:
            selector = template.selector().resolve(params)
        except TemplateError as exc:
            return self.error(template, f"query {template.name!r}: {exc}")
        pages: list[_Page] = prepared  # type: ignore[assignment]
        values: list[MetricValue] = []
        warnings: list[str] = []
        scraped = 0
        for page in pages:
            if page.text is None:
                warnings.append(f"{page.instance}: {page.error}")
                continue
            try:
                samples = parse_series(page.text, [selector.name]).get(selector.name, [])
            except ValueError as exc:
                warnings.append(f"{page.instance}: {exc}")
                continue
            scraped += 1
            for sample in samples:
                labels = dict(sample.labels)
                if "instance" in labels:
                    labels["exported_instance"] = labels.pop("instance")
                labels["instance"] = page.instance
                if selector.matches(labels):
                    values.append(MetricValue(labels, sample.value, page.scraped_at))
        if pages and not scraped:
            return self.error(template, "no endpoint could be scraped: " + "; ".join(warnings))
        if not pages:
            return self.error(template, "no endpoints to scrape")
        return QueryResult(template.name, tuple(values), collected_at=self._wall_clock(), warnings=tuple(warnings))
