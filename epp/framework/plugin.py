"""Plugin identity and the handle a plugin receives when it is built.

Every plugin is a small class registered under its config ``type`` (the GIE name, e.g.
``queue-scorer``) and instantiated under a ``name`` (defaults to the type). A plugin
opts into an extension point by implementing that point's one-method Protocol (see
``epp.framework.scheduling``, ``epp.framework.requestcontrol``, ``epp.framework.datalayer``);
the config loader sorts plugins into per-phase lists once, never per request.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from epp.datalayer.pool import EndpointPool
    from epp.flowcontrol.types import WorkloadStatsView

__all__ = ["BackgroundWork", "BasePlugin", "Handle", "Plugin", "TypedName"]


@dataclass(frozen=True, slots=True)
class TypedName:
    """(type, name) of a plugin instance; rendered ``name/type`` in logs and metric labels."""

    type: str
    name: str

    def __str__(self) -> str:
        return f"{self.name}/{self.type}"


@runtime_checkable
class Plugin(Protocol):
    """What every plugin has: its identity."""

    typed_name: TypedName


@runtime_checkable
class BackgroundWork(Protocol):
    """A plugin with work off the request path (e.g. the latency predictor's refits).

    The server runs ``run`` under its task supervisor (restarted if it crashes) and calls
    ``close`` once at shutdown, after ``run`` was cancelled, to flush or save state.
    """

    async def run(self) -> None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class Handle:
    """Shared services handed to plugin constructors.

    Attributes:
        pool: the endpoint pool (plugins may subscribe to endpoint removal to drop state).
        rng: the one random source for routing decisions; seeded in tests.
        metrics_registry: where plugins register their own Prometheus collectors.
        plugins: instances built so far, by name (lets a plugin find a peer it depends on).
        workloads: per-workload wait time and request rate (``epp.flowcontrol.workloads``),
            read-only; ``None`` when flow control is not running.
    """

    pool: EndpointPool
    rng: random.Random = field(default_factory=random.Random)
    metrics_registry: CollectorRegistry | None = None
    plugins: dict[str, Any] = field(default_factory=dict)
    workloads: WorkloadStatsView | None = None


class BasePlugin:
    """Convenience base: stores the typed name. Holds no behaviour.

    Subclasses set ``TYPE`` (the config type string) and ``PARAMS`` (a frozen dataclass
    of parameters, or ``None`` when the plugin takes none). The registry builds every
    plugin as ``cls(name, params, handle)``, so there is exactly one construction path.
    """

    TYPE: ClassVar[str]
    PARAMS: ClassVar[type | None] = None
    # Keys of per-request data this plugin reads that a data producer must write; the
    # loader creates the registered default producer when the config names none.
    CONSUMES: ClassVar[frozenset[str]] = frozenset()
    PRODUCES: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, params: Any, handle: Handle) -> None:
        self.typed_name = TypedName(self.TYPE, name)
        self.params = params

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.typed_name}>"
