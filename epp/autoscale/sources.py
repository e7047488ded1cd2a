"""Query results, the ``MetricsSource`` protocol and the registry of named sources.

A ``QueryResult`` holds either the series a query returned (``values``: one
``MetricValue`` per series, labels and a float) or an ``error`` string, never both.
NaN means missing, never zero: a series whose value is NaN (Prometheus returns NaN for
``0/0``) keeps NaN, and ``first()`` of a result without series is NaN. ``±Inf`` are
kept as reported. Partial failures (one pod of three could not be scraped, Prometheus
warnings) are listed in ``warnings`` of a successful result; the series of the failed
pod are simply absent.

A source's ``refresh(params)`` runs every query of its list (or the ``queries`` named)
concurrently and returns a result per query; a query that fails, including one missing a
parameter, gives an error result rather than an exception. Successful results are
cached under ``(query name, the query's own parameters)``; errors are not cached, so
``get`` returns the last good result younger than the TTL, or ``None``. Check
``collected_at`` for the age of what ``get`` returns.

Which replica a series belongs to: ``replica_of(labels)`` reads ``pod``, then
``pod_name``, then ``instance`` (the ``host:port`` Prometheus and ``PodScrapeSource``
attach).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from epp.autoscale.cache import TTLCache
from epp.autoscale.templates import QueryList, QueryTemplate

__all__ = [
    "CachingSource",
    "MetricValue",
    "MetricsSource",
    "QueryResult",
    "SourceRegistry",
    "replica_of",
]

_REPLICA_LABELS = ("pod", "pod_name", "instance")


def replica_of(labels: Mapping[str, str]) -> str:
    """The replica a series belongs to: its ``pod``, ``pod_name`` or ``instance`` label, else ``""``."""
    for label in _REPLICA_LABELS:
        if labels.get(label):
            return labels[label]
    return ""


@dataclass(frozen=True, slots=True)
class MetricValue:
    labels: Mapping[str, str]
    value: float
    timestamp: float = 0.0  # seconds since the epoch: the sample's time, or the scrape's


@dataclass(frozen=True, slots=True)
class QueryResult:
    query: str
    values: tuple[MetricValue, ...] = ()
    error: str | None = None
    collected_at: float = 0.0  # wall-clock seconds when the source got the answer
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.error is not None and self.values:
            raise ValueError("a query result holds either values or an error, not both")

    @property
    def ok(self) -> bool:
        return self.error is None

    def first(self) -> float:
        """The first series' value; NaN when the query failed or returned no series."""
        return self.values[0].value if self.ok and self.values else math.nan

    def by_replica(self) -> dict[str, float]:
        """Values keyed by ``replica_of(labels)``; with several series per replica the largest wins (NaN loses)."""
        out: dict[str, float] = {}
        for sample in self.values:
            key = replica_of(sample.labels)
            old = out.get(key)
            if old is None or math.isnan(old) or sample.value > old:
                out[key] = sample.value
        return out

    def by_label(self, label: str) -> dict[str, float]:
        """Values keyed by one label (absent label: ``""``); the last series wins on a clash."""
        return {sample.labels.get(label, ""): sample.value for sample in self.values}


@runtime_checkable
class MetricsSource(Protocol):
    def query_list(self) -> QueryList: ...

    async def refresh(self, params: Mapping[str, str],
                      queries: Iterable[str] | None = None) -> dict[str, QueryResult]: ...

    def get(self, name: str, params: Mapping[str, str]) -> QueryResult | None: ...


class CachingSource:
    """The refresh/get logic both sources share; a subclass supplies ``_run`` for one query.

    ``_prepare`` runs once per refresh before the queries (the pod source scrapes there) and
    what it returns is handed to every ``_run`` of that refresh.
    """

    def __init__(self, queries: QueryList, cache: TTLCache[QueryResult] | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._queries = queries
        self._cache: TTLCache[QueryResult] = cache if cache is not None else TTLCache()
        self._wall_clock = wall_clock

    @property
    def cache(self) -> TTLCache[QueryResult]:
        return self._cache

    def query_list(self) -> QueryList:
        return self._queries

    @staticmethod
    def _own_params(template: QueryTemplate, params: Mapping[str, str]) -> dict[str, str]:
        return {p: params[p] for p in template.params if p in params}

    def get(self, name: str, params: Mapping[str, str]) -> QueryResult | None:
        """The cached result of the last successful refresh of ``name`` with these parameters, if fresh."""
        if name not in self._queries:
            return None
        return self._cache.get(name, self._own_params(self._queries.get(name), params))

    async def refresh(self, params: Mapping[str, str],
                      queries: Iterable[str] | None = None) -> dict[str, QueryResult]:
        """Run the queries concurrently; return ``{name: result}`` in list order.

        Raises:
            KeyError: a name in ``queries`` is not in the list.
        """
        templates = list(self._queries) if queries is None else [self._queries.get(n) for n in queries]
        prepared = await self._prepare(templates, params)
        results = await asyncio.gather(*(self._guarded(t, params, prepared) for t in templates))
        out: dict[str, QueryResult] = {}
        for template, result in zip(templates, results, strict=True):
            out[template.name] = result
            if result.ok:
                self._cache.put(template.name, self._own_params(template, params), result)
        return out

    async def _guarded(self, template: QueryTemplate, params: Mapping[str, str], prepared: object) -> QueryResult:
        try:
            return await self._run(template, params, prepared)
        except Exception as exc:  # one broken query must not lose the others' results
            return self.error(template, f"{type(exc).__name__}: {exc}")

    def error(self, template: QueryTemplate, message: str) -> QueryResult:
        return QueryResult(template.name, error=message, collected_at=self._wall_clock())

    async def _prepare(self, templates: list[QueryTemplate], params: Mapping[str, str]) -> object:
        return None

    async def _run(self, template: QueryTemplate, params: Mapping[str, str], prepared: object) -> QueryResult:
        raise NotImplementedError


@dataclass
class SourceRegistry:
    """Metrics sources by name (``"prometheus"``, ``"pods"``, ...)."""

    _sources: dict[str, MetricsSource] = field(default_factory=dict)

    def register(self, name: str, source: MetricsSource) -> None:
        """Raises ValueError for an empty or already registered name."""
        if not name:
            raise ValueError("source name must not be empty")
        if name in self._sources:
            raise ValueError(f"metrics source {name!r} is already registered")
        self._sources[name] = source

    def get(self, name: str) -> MetricsSource:
        """Raises KeyError (listing the known names) for an unknown name."""
        try:
            return self._sources[name]
        except KeyError:
            raise KeyError(f"unknown metrics source {name!r}; known: {', '.join(self._sources) or 'none'}") from None

    def names(self) -> list[str]:
        return list(self._sources)

    def __contains__(self, name: object) -> bool:
        return name in self._sources
