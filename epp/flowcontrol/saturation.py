"""Saturation detectors: how full the pool is, for flow control and as scheduling filters.

Two plugins, each both a ``SaturationDetector`` (``epp.flowcontrol.types``) and a
scheduling ``Filter``, with the Go EPP's semantics:

- ``utilization-detector``: per endpoint, ``max(queue / queueDepthThreshold,
  kv / kvCacheUtilThreshold)`` from its metrics (which include this picker's own
  dispatches since the last scrape); metrics older than ``metricsStalenessThreshold``, or
  never scraped, count as 1.0. The pool's saturation is the average over endpoints.
- ``concurrency-detector``: requests (or estimated tokens) this picker has in flight,
  over the pool's capacity (``maxConcurrency`` or ``maxTokenConcurrency`` per endpoint).
  The counts come from the ``inflight-load-producer``, which the config loader creates
  because this detector declares that it consumes them.

As filters both drop endpoints at or above their limit times ``1 + headroom`` (and, for
utilization, endpoints with stale metrics), but fail open: when every endpoint would be
dropped, all are kept, so the filter never turns overload into "no endpoint" errors
(flow control, not the filter, decides what to shed). An empty pool reads 1.0: nothing
can be dispatched to it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from epp.datalayer.endpoint import Endpoint
from epp.framework.attributes import INFLIGHT_LOAD_KEY, InFlightLoad
from epp.framework.params import Duration, require
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.scheduling import CycleState
from epp.requests.types import InferenceRequest

__all__ = ["ConcurrencyDetector", "ConcurrencyParams", "UtilizationDetector", "UtilizationParams"]

log = logging.getLogger(__name__)

EMPTY_POOL_SATURATION = 1.0


def _positive_finite(value: float, field_name: str) -> None:
    require(math.isfinite(value) and value > 0, field_name, "must be a positive finite number", value)


def _valid_headroom(value: float) -> None:
    require(math.isfinite(value) and value >= 0, "headroom", "must be >= 0", value)


def _fail_open(endpoints: list[Endpoint], keep: Callable[[Endpoint], bool]) -> list[Endpoint]:
    """The endpoints ``keep`` accepts, or all of them when it accepts none (Go's fail-open rule)."""
    kept = [endpoint for endpoint in endpoints if keep(endpoint)]
    return kept or list(endpoints)


@dataclass(frozen=True, slots=True, kw_only=True)
class UtilizationParams:
    queue_depth_threshold: float = 5.0
    kv_cache_util_threshold: float = 0.8
    metrics_staleness_threshold: Duration = Duration(0.2)
    headroom: float = 0.0

    def __post_init__(self) -> None:
        _positive_finite(self.queue_depth_threshold, "queue_depth_threshold")
        _positive_finite(self.kv_cache_util_threshold, "kv_cache_util_threshold")
        _positive_finite(self.metrics_staleness_threshold, "metrics_staleness_threshold")
        _valid_headroom(self.headroom)


class UtilizationDetector(BasePlugin):
    """Saturation from scraped queue depth and KV-cache use, against thresholds."""

    TYPE = "utilization-detector"
    PARAMS = UtilizationParams
    params: UtilizationParams

    def __init__(self, name: str, params: UtilizationParams | None, handle: Handle) -> None:
        super().__init__(name, params or UtilizationParams(), handle)

    def _stale(self, endpoint: Endpoint, now: float) -> bool:
        updated = endpoint.metrics.update_time
        return updated <= 0.0 or now - updated > self.params.metrics_staleness_threshold

    def endpoint_saturation(self, endpoint: Endpoint, now: float) -> float:
        """``max(queue/threshold, kv/threshold)``; 1.0 when the metrics are stale or missing."""
        if self._stale(endpoint, now):
            return 1.0
        metrics = endpoint.metrics
        return max(metrics.waiting_queue_size / self.params.queue_depth_threshold,
                   metrics.kv_cache_usage_percent / self.params.kv_cache_util_threshold)

    def saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
        if not endpoints:
            return EMPTY_POOL_SATURATION
        return sum(self.endpoint_saturation(endpoint, now) for endpoint in endpoints) / len(endpoints)

    def has_capacity(self, endpoint: Endpoint, now: float) -> bool:
        """Fresh metrics below both thresholds stretched by ``headroom``."""
        if self._stale(endpoint, now):
            return False
        stretch = 1.0 + self.params.headroom
        metrics = endpoint.metrics
        return (metrics.waiting_queue_size < self.params.queue_depth_threshold * stretch
                and metrics.kv_cache_usage_percent < self.params.kv_cache_util_threshold * stretch)

    def filter(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        now = time.monotonic()
        return _fail_open(endpoints, lambda endpoint: self.has_capacity(endpoint, now))

    def debug_snapshot(self, endpoints: Sequence[Endpoint], now: float) -> dict[str, Any]:
        """Per-endpoint scores and the pool's saturation, for ``/debug/flowcontrol``."""
        return {
            "detector": str(self.typed_name),
            "saturation": self.saturation(endpoints, now),
            "endpoints": {
                endpoint.name: {
                    "score": self.endpoint_saturation(endpoint, now),
                    "stale": self._stale(endpoint, now),
                    "waitingQueueSize": endpoint.metrics.waiting_queue_size,
                    "kvCacheUsagePercent": endpoint.metrics.kv_cache_usage_percent,
                }
                for endpoint in endpoints
            },
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ConcurrencyParams:
    concurrency_mode: Literal["requests", "tokens"] = "requests"
    max_concurrency: int = 100
    max_token_concurrency: int = 1_000_000
    headroom: float = 0.0

    def __post_init__(self) -> None:
        require(self.max_concurrency > 0, "max_concurrency", "must be > 0", self.max_concurrency)
        require(self.max_token_concurrency > 0, "max_token_concurrency", "must be > 0", self.max_token_concurrency)
        _valid_headroom(self.headroom)


_NO_LOAD = InFlightLoad({}, {}, {})


class ConcurrencyDetector(BasePlugin):
    """Saturation from what this picker has in flight, against a per-endpoint capacity."""

    TYPE = "concurrency-detector"
    PARAMS = ConcurrencyParams
    CONSUMES = frozenset({INFLIGHT_LOAD_KEY})
    params: ConcurrencyParams

    def __init__(self, name: str, params: ConcurrencyParams | None, handle: Handle) -> None:
        super().__init__(name, params or ConcurrencyParams(), handle)
        self._handle = handle
        # Found at first use: the producer may be built (auto-created) after this plugin.
        self._load: InFlightLoad | None = None
        self._missing_logged = False
        tokens = self.params.concurrency_mode == "tokens"
        self.capacity = self.params.max_token_concurrency if tokens else self.params.max_concurrency
        self._count: Callable[[InFlightLoad, str], int] = InFlightLoad.tokens if tokens else InFlightLoad.requests

    def _inflight(self) -> InFlightLoad:
        if self._load is not None:
            return self._load
        for plugin in self._handle.plugins.values():
            load = getattr(plugin, "load", None)
            if isinstance(load, InFlightLoad):
                self._load = load
                return load
        if not self._missing_logged:
            # The loader creates the producer for every consumer, so this is a wiring bug;
            # reading 0 keeps requests flowing rather than failing every one of them.
            log.error("%s: no inflight-load-producer among the plugins; in-flight counts read 0", self.typed_name)
            self._missing_logged = True
        return _NO_LOAD

    def in_flight(self, endpoint: Endpoint, load: InFlightLoad | None = None) -> int:
        """Requests or estimated tokens (per ``concurrencyMode``) in flight on ``endpoint``."""
        return self._count(self._inflight() if load is None else load, endpoint.name)

    def saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
        if not endpoints:
            return EMPTY_POOL_SATURATION
        load = self._inflight()
        total = sum(self._count(load, endpoint.name) for endpoint in endpoints)
        return total / (len(endpoints) * self.capacity)

    def filter(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        published = cycle.get(INFLIGHT_LOAD_KEY)
        load = published if isinstance(published, InFlightLoad) else self._inflight()
        limit = self.capacity * (1.0 + self.params.headroom)
        return _fail_open(endpoints, lambda endpoint: self._count(load, endpoint.name) < limit)

    def debug_snapshot(self, endpoints: Sequence[Endpoint], now: float) -> dict[str, Any]:
        """Per-endpoint in-flight counts and the pool's saturation, for ``/debug/flowcontrol``."""
        load = self._inflight()
        return {
            "detector": str(self.typed_name),
            "mode": self.params.concurrency_mode,
            "capacityPerEndpoint": self.capacity,
            "saturation": self.saturation(endpoints, now),
            "endpoints": {endpoint.name: {"inFlight": self._count(load, endpoint.name)} for endpoint in endpoints},
        }
