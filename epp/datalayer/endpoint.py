"""An endpoint (one model-server replica) and the metrics scraped from it.

The hot path reads ``endpoint.metrics`` without locks: extractors never mutate a
``Metrics`` object, they build a new frozen one and swap the reference, so a scheduling
cycle always sees one consistent scrape per endpoint.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["ENGINE_LABEL", "Endpoint", "EndpointMetadata", "Metrics", "format_hostport"]

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
    active_models: frozenset[str] = frozenset()  # LoRA adapters running
    waiting_models: frozenset[str] = frozenset()  # LoRA adapters waiting
    max_active_models: int = 0  # LoRA slots
    cache_block_size: int = 0  # tokens per KV block
    cache_num_blocks: int = 0  # KV blocks on the device
    update_time: float = 0.0


class Endpoint:
    """A pool member: metadata, the latest metrics and its readiness.

    ``metrics`` is what scorers read: the last scrape, possibly adjusted by the picker's
    own estimate of what it routed there since (``estimate``, see ``dispatch``).
    ``scraped_metrics`` is the last scrape alone; extractors build on it, so a scrape
    replaces the estimate even when it lacks some series. Assigning ``metrics`` records a
    scrape (both change).

    ``ready`` turns false when the collector has failed to reach the endpoint for a
    while (see ``Collector``); candidate selection skips endpoints that are not ready.
    """

    __slots__ = ("metadata", "_metrics", "scraped_metrics", "ready", "hostport", "name")

    def __init__(self, metadata: EndpointMetadata, metrics: Metrics | None = None) -> None:
        self.metadata = metadata
        self.metrics = metrics or Metrics()
        self.ready = True
        # Cached because they are read on every request (the address never changes: a
        # new address under the same name is a new Endpoint, see EndpointPool).
        self.hostport = metadata.hostport
        self.name = metadata.name

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    @metrics.setter
    def metrics(self, scraped: Metrics) -> None:
        self._metrics = self.scraped_metrics = scraped

    def estimate(self, metrics: Metrics) -> None:
        """Replace what scorers read until the next scrape, keeping the scraped truth."""
        self._metrics = metrics

    def __repr__(self) -> str:
        return f"<Endpoint {self.name} {self.hostport}>"
