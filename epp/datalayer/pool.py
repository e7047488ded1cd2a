"""The endpoint pool: the set of model-server endpoints the picker may route to.

A pool source (static flag list, watched pool file, later Kubernetes) calls
``replace_all`` with the full desired set; the pool diffs it, keeps the ``Endpoint``
objects (and their metrics) of members that stay, and tells listeners about additions and
removals so the collector starts or stops scraping and plugins drop per-endpoint state.

Concurrency: all methods run on the event loop thread; readers get immutable tuples.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from epp.datalayer.endpoint import Endpoint, EndpointMetadata

__all__ = ["EndpointPool", "PoolListener", "PoolStatistics"]


class PoolListener(Protocol):
    """Told when members join and leave.

    A listener may also define ``endpoint_restarted(endpoint)``: the same server came back
    with empty state (``EndpointPool.restarted``). Without it, a restart is a removal
    followed by an addition.
    """

    def endpoint_added(self, endpoint: Endpoint) -> None: ...

    def endpoint_removed(self, endpoint: Endpoint) -> None: ...


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    endpoints: int
    ready: int
    synced: bool


class EndpointPool:
    def __init__(self, name: str = "default") -> None:
        self.name = name
        self._endpoints: dict[str, Endpoint] = {}
        self._all: tuple[Endpoint, ...] = ()
        self._ready: tuple[Endpoint, ...] | None = None
        self._listeners: list[PoolListener] = []
        # True once a pool source has delivered its first complete view.
        self.synced = False

    def add_listener(self, listener: PoolListener) -> None:
        self._listeners.append(listener)

    def endpoints(self) -> tuple[Endpoint, ...]:
        """Every member, ready or not."""
        return self._all

    def ready_endpoints(self) -> tuple[Endpoint, ...]:
        """Members that are ready; cached until membership or readiness changes."""
        if self._ready is None:
            self._ready = tuple(ep for ep in self._all if ep.ready)
        return self._ready

    def get(self, name: str) -> Endpoint | None:
        return self._endpoints.get(name)

    def set_ready(self, endpoint: Endpoint, ready: bool) -> None:
        if endpoint.ready != ready:
            endpoint.ready = ready
            self._ready = None

    def replace_all(self, members: Iterable[EndpointMetadata]) -> tuple[list[Endpoint], list[Endpoint]]:
        """Make the pool exactly ``members``; returns ``(added, removed)``.

        A member whose labels or metrics port changed keeps its ``Endpoint`` object, metrics
        and readiness; only its metadata is swapped. A member whose address or port changed
        is a different server under the same name: it is removed and added again, so
        listeners drop what they knew of the old one (cached prefixes, in-flight counts).
        """
        desired: dict[str, EndpointMetadata] = {}
        for meta in members:
            if meta.name in desired:
                raise ValueError(f"duplicate endpoint name {meta.name!r}")
            desired[meta.name] = meta
        removed = [ep for name, ep in self._endpoints.items()
                   if name not in desired or ep.hostport != desired[name].hostport]
        added: list[Endpoint] = []
        for endpoint in removed:
            del self._endpoints[endpoint.name]
        for name, meta in desired.items():
            current = self._endpoints.get(name)
            if current is None:
                endpoint = Endpoint(meta)
                self._endpoints[name] = endpoint
                added.append(endpoint)
            elif current.metadata != meta:
                current.metadata = meta
        self._all = tuple(self._endpoints.values())
        self._ready = None
        self.synced = True
        for endpoint in removed:
            for listener in self._listeners:
                listener.endpoint_removed(endpoint)
        for endpoint in added:
            for listener in self._listeners:
                listener.endpoint_added(endpoint)
        return added, removed

    def restarted(self, endpoint: Endpoint) -> None:
        """The server behind ``endpoint`` restarted (its caches are empty): listeners drop what they knew.

        The ``Endpoint`` stays (same name, address and scrape task). Each listener's
        ``endpoint_restarted`` is called if it has one, else ``endpoint_removed`` then
        ``endpoint_added``. An endpoint no longer in the pool is ignored.
        """
        if self._endpoints.get(endpoint.name) is not endpoint:
            return
        for listener in self._listeners:
            restarted = getattr(listener, "endpoint_restarted", None)
            if restarted is not None:
                restarted(endpoint)
            else:
                listener.endpoint_removed(endpoint)
                listener.endpoint_added(endpoint)

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(len(self._all), len(self.ready_endpoints()), self.synced)
