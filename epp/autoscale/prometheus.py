"""A metrics source that asks a Prometheus server (HTTP API ``/api/v1/query``, instant queries).

Each query is rendered from its template (``templates.render``: escaped and validated
values) and sent as a form-encoded POST, so long queries never hit URL limits. Result
types ``vector`` (one ``MetricValue`` per series, labels as returned) and ``scalar`` (one
value, no labels) are read; ``matrix`` and ``string`` results are reported as errors
(write an instant-vector query, e.g. ``max_over_time(x[1m])``). Values are kept as
Prometheus sent them, so NaN stays NaN.

Failures end up in the result's ``error``, never raised:

* connection failures (including a connect timeout) and HTTP 5xx are retried up to
  ``retries`` times, waiting ``backoff * 2**n`` seconds before retry ``n`` (0.2 s, 0.4 s);
* a 4xx (a bad query: Prometheus answers 400 ``bad_data`` or 422 ``execution``) and a
  read timeout are not retried: the same query would fail again, or spend the time again;
* a ``status: error`` payload is reported with its ``errorType`` and ``error``.

``timeout`` is per HTTP attempt. Pass ``client`` to share connections (it is then not
closed by ``aclose``); otherwise the source makes and owns one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

from epp.autoscale.cache import TTLCache
from epp.autoscale.sources import CachingSource, MetricValue, QueryResult
from epp.autoscale.templates import QueryList, QueryTemplate, TemplateError, render

__all__ = ["PrometheusSource"]


class _Retryable(Exception):
    pass


class PrometheusSource(CachingSource):
    def __init__(self, url: str, queries: QueryList, *, timeout: float = 5.0, retries: int = 2,
                 backoff: float = 0.2, cache: TTLCache[QueryResult] | None = None,
                 client: httpx.AsyncClient | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 wall_clock: Callable[[], float] = time.time) -> None:
        super().__init__(queries, cache, wall_clock)
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"Prometheus URL must start with http:// or https://, not {url!r}")
        if retries < 0 or not timeout > 0 or backoff < 0:
            raise ValueError("timeout must be positive, retries and backoff not negative")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> PrometheusSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self, template: QueryTemplate, params: Mapping[str, str], prepared: object) -> QueryResult:
        try:
            query = render(template, params)
        except TemplateError as exc:
            return self.error(template, str(exc))
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await self._sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return await self._attempt(template, query)
            except _Retryable as exc:
                last = str(exc)
        return self.error(template, f"{last} (after {self.retries + 1} attempts)")

    async def _attempt(self, template: QueryTemplate, query: str) -> QueryResult:
        try:
            response = await self._client.post(f"{self.url}/api/v1/query", data={"query": query},
                                               timeout=self.timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Retryable(f"cannot connect to Prometheus at {self.url}: {exc or type(exc).__name__}") from None
        except httpx.TimeoutException as exc:
            return self.error(template, f"Prometheus did not answer within {self.timeout}s "
                                        f"({type(exc).__name__})")
        except httpx.TransportError as exc:
            raise _Retryable(f"Prometheus connection failed: {type(exc).__name__}: {exc}") from None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            message = f"HTTP {response.status_code} from Prometheus with a body that is not a JSON object"
            if response.status_code >= 500:
                raise _Retryable(message)
            return self.error(template, message)
        if payload.get("status") != "success":
            message = (f"HTTP {response.status_code}, Prometheus {payload.get('errorType') or 'error'}: "
                       f"{payload.get('error') or 'no message'}")
            if response.status_code >= 500:
                raise _Retryable(message)
            return self.error(template, message)
        try:
            values = _parse_data(payload.get("data"))
        except ValueError as exc:
            return self.error(template, f"unexpected Prometheus answer: {exc}")
        warnings = payload.get("warnings") or []
        return QueryResult(template.name, values, collected_at=self._wall_clock(),
                           warnings=tuple(str(w) for w in warnings) if isinstance(warnings, list) else ())


def _sample(pair: Any) -> tuple[float, float]:
    if not (isinstance(pair, list) and len(pair) == 2):
        raise ValueError(f"a sample must be [time, \"value\"], not {pair!r}")
    return float(pair[0]), float(pair[1])  # float() reads "NaN", "+Inf" and "-Inf"


def _parse_data(data: Any) -> tuple[MetricValue, ...]:
    if not isinstance(data, dict):
        raise ValueError("no data object")
    kind = data.get("resultType")
    result = data.get("result")
    if kind == "scalar":
        ts, value = _sample(result)
        return (MetricValue({}, value, ts),)
    if kind == "vector":
        if not isinstance(result, list):
            raise ValueError("vector result is not a list")
        out: list[MetricValue] = []
        for series in result:
            if not isinstance(series, dict) or not isinstance(series.get("metric", {}), dict):
                raise ValueError(f"bad series {series!r}")
            labels = {str(k): str(v) for k, v in series.get("metric", {}).items()}
            if "value" not in series:
                raise ValueError("a vector series has no value (native histograms are not read)")
            ts, value = _sample(series["value"])
            out.append(MetricValue(labels, value, ts))
        return tuple(out)
    raise ValueError(f"result type {kind!r} is not supported; write an instant-vector or scalar query")
