"""An endpoint (one model-server replica) and the metrics scraped from it.

The hot path reads ``endpoint.metrics`` without locks: extractors never mutate a
``Metrics`` object, they build a new frozen one and swap the reference, so a scheduling
cycle always sees one consistent scrape per endpoint.
"""

from __future__ import annotations

import ipaddress
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from epp.datalayer.cache_counters import HitRateWindow

__all__ = ["ENGINE_LABEL", "CustomValue", "Endpoint", "EndpointMetadata", "Metrics", "OutlierState", "format_hostport"]

# The pod label the Go EPP reads to pick the metric names of a model server's engine.
ENGINE_LABEL = "inference.networking.k8s.io/engine-type"


def format_hostport(address: str, port: int) -> str:
    """``ip:port`` as Envoy's ORIGINAL_DST header expects it (IPv6 in brackets)."""
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]:{port}"
    except ValueError:
        pass
    return f"{address}:{port}"


@dataclass(frozen=True, slots=True)
class EndpointMetadata:
    """Identity and address of a model-server endpoint.

    Attributes:
        name: unique within the pool (defaults to ``ip:port``).
        address: IP address Envoy connects to.
        port: serving port.
        metrics_port: port of ``/metrics`` (usually the serving port).
        labels: free-form labels, e.g. the engine type.
    """

    name: str
    address: str
    port: int
    metrics_port: int
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def hostport(self) -> str:
        return format_hostport(self.address, self.port)

    @property
    def metrics_hostport(self) -> str:
        return format_hostport(self.address, self.metrics_port)


@dataclass(frozen=True, slots=True)
class Metrics:
    """One consistent view of an endpoint's load, as last scraped.

    ``update_time`` is ``time.monotonic()`` of the scrape that produced these values;
    0.0 means never scraped. A failed scrape leaves the previous object in place, so
    consumers judge staleness from ``update_time``.
    """

    waiting_queue_size: int = 0
    running_requests_size: int = 0
    kv_cache_usage_percent: float = 0.0  # fraction in [0, 1], as vLLM reports it
    active_models: frozenset[str] = frozenset()  # LoRA adapters known to be running
    waiting_models: frozenset[str] = frozenset()  # LoRA adapters with requests, not known to run
    max_active_models: int = 0  # LoRA slots
    cache_block_size: int = 0  # tokens per KV block
    cache_num_blocks: int = 0  # KV blocks on the device
    # Lifetime prefix-cache counters (prompt tokens found / looked up) as last scraped, and
    # the hit rate over the last ~30 s (None: no lookups in that window, or no counters).
    prefix_cache_hits: float = 0.0
    prefix_cache_queries: float = 0.0
    prefix_cache_hit_rate: float | None = None
    # ``process_start_time_seconds`` of the server (0.0: not reported); a change is a restart.
    process_start_time: float = 0.0
    update_time: float = 0.0


@dataclass(frozen=True, slots=True)
class CustomValue:
    """One custom metric of an endpoint (``Endpoint.custom``), as last extracted.

    ``update_time`` is ``time.monotonic()`` of the extraction; a scrape that lacks the
    series leaves the old value in place, so consumers judge staleness by age.
    """

    value: float
    update_time: float


@dataclass(slots=True)
class OutlierState:
    """What passive health checking knows of one endpoint (``epp.datalayer.passive_health``).

    Lives on the ``Endpoint`` so it goes away with it: an endpoint that leaves the pool and
    comes back is a new ``Endpoint`` with a clean record.
    """

    consecutive_failures: int = 0
    ejections_in_a_row: int = 0  # multiplies the ejection time; a success resets it
    ejected_until: float = 0.0  # time.monotonic(); 0.0 means never ejected
    ejected_at: float = 0.0
    # Ejected once and not yet seen to answer since: its next result decides whether it is
    # back (success) or ejected again at once (failure).
    on_probation: bool = False
    held_by_limit: bool = False  # the ejection limit kept it in; logged once per streak


class Endpoint:
    """A pool member: metadata, the latest metrics and its readiness.

    ``metrics`` is what scorers read: the last scrape, possibly adjusted by the picker's
    own estimate of what it routed there since (``add_dispatch``, see ``dispatch``).
    ``scraped_metrics`` is the last scrape alone; extractors build on it, so a scrape
    replaces the estimate even when it lacks some series. Assigning ``metrics`` records a
    scrape: it settles every dispatch made before ``fetch_started`` (the collector sets it
    while it extracts a page; outside that, +inf: every dispatch so far), and the later ones
    stay on top, since the page may have been rendered before they arrived. A dispatch not
    settled by a scrape within ``dispatch_ttl`` seconds is dropped anyway (pages without the
    queue series, failing scrapes), so an estimate never outlives that bound.

    ``ready`` turns false when the collector has failed to reach the endpoint for a
    while (see ``Collector``); candidate selection skips endpoints that are not ready.

    ``outlier.ejected_until`` is the other, independent signal: passive health checking
    (``PassiveHealth``) ejects an endpoint whose responses keep failing, for a while. The two
    are kept apart because they have different owners and lifetimes (a good scrape must not
    end an ejection, and an ejection's end must not claim the scrapes succeed);
    ``available(now)`` is both together, and is what candidate selection should read.
    """

    __slots__ = ("metadata", "_metrics", "scraped_metrics", "ready", "outlier", "hostport", "name", "custom",
                 "_dispatches", "_dispatched_kv", "fetch_started", "dispatch_ttl", "prefix_cache")

    def __init__(self, metadata: EndpointMetadata, metrics: Metrics | None = None) -> None:
        self.metadata = metadata
        # Routed requests no scrape has settled yet: (time.monotonic(), KV fraction added),
        # oldest first. Set before ``metrics``: its setter reads them.
        self._dispatches: deque[tuple[float, float]] = deque()
        self._dispatched_kv = 0.0
        self.fetch_started = math.inf
        self.dispatch_ttl = 1.0  # the collector sets its own, from its interval and timeout
        self.metrics = metrics or Metrics()
        self.ready = True
        self.outlier = OutlierState()
        # Custom metrics by key (``prometheus-metric`` and other extractors): each key's
        # value is swapped whole, so readers never see a value without its update time.
        self.custom: dict[str, CustomValue] = {}
        # The scraped prefix-cache counters' recent history (the extractor feeds it).
        self.prefix_cache = HitRateWindow()
        # Cached because they are read on every request (the address never changes: a
        # new address under the same name is a new Endpoint, see EndpointPool).
        self.hostport = metadata.hostport
        self.name = metadata.name

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    @metrics.setter
    def metrics(self, scraped: Metrics) -> None:
        self.scraped_metrics = scraped
        if self._dispatches:
            self._drop_dispatches(self.fetch_started)
        self._metrics = self._estimated(scraped)

    @property
    def ejected_until(self) -> float:
        """``time.monotonic()`` at which the current ejection ends (in the past: not ejected)."""
        return self.outlier.ejected_until

    def ejected(self, now: float) -> bool:
        return now < self.outlier.ejected_until

    def available(self, now: float) -> bool:
        """Ready by its scrapes and not ejected for failing responses."""
        return self.ready and now >= self.outlier.ejected_until

    def add_dispatch(self, now: float, kv_fraction: float) -> None:
        """Count a request routed here at ``now`` (``time.monotonic()``) as waiting, until a scrape settles it.

        ``kv_fraction`` is the share of the KV cache its uncached prompt will take.
        """
        self._drop_dispatches(now - self.dispatch_ttl)
        self._dispatches.append((now, kv_fraction))
        self._dispatched_kv += kv_fraction
        self._metrics = self._estimated(self.scraped_metrics)

    def expire_dispatches(self, now: float) -> None:
        """Drop dispatches older than ``dispatch_ttl`` that no scrape has settled."""
        if self._dispatches and self._dispatches[0][0] < now - self.dispatch_ttl:
            self._drop_dispatches(now - self.dispatch_ttl)
            self._metrics = self._estimated(self.scraped_metrics)

    def _drop_dispatches(self, before: float) -> None:
        dispatches = self._dispatches
        while dispatches and dispatches[0][0] < before:
            self._dispatched_kv -= dispatches.popleft()[1]
        if not dispatches:
            self._dispatched_kv = 0.0  # no float residue once nothing is pending

    def _estimated(self, scraped: Metrics) -> Metrics:
        pending = len(self._dispatches)
        if not pending:
            return scraped
        return replace(scraped, waiting_queue_size=scraped.waiting_queue_size + pending,
                       kv_cache_usage_percent=min(1.0, scraped.kv_cache_usage_percent + self._dispatched_kv))

    def __repr__(self) -> str:
        return f"<Endpoint {self.name} {self.hostport}>"
