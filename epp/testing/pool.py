"""Pool listeners that write down what they were told, in order."""

from __future__ import annotations

from epp.datalayer.endpoint import Endpoint

__all__ = ["PoolRecorder", "RestartAwareRecorder"]


class PoolRecorder:
    """A listener without ``endpoint_restarted``: a restart reaches it as removed, then added."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def endpoint_added(self, endpoint: Endpoint) -> None:
        self.events.append(("added", endpoint.name))

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.events.append(("removed", endpoint.name))


class RestartAwareRecorder(PoolRecorder):
    def endpoint_restarted(self, endpoint: Endpoint) -> None:
        self.events.append(("restarted", endpoint.name))
