"""``slo-request-tracker``: the requests this picker has running on each endpoint, with their TPOT objective.

The seed's ``SLORequestTracker`` (task 2.2): PreRequest adds the request to its primary
endpoint's running set; ResponseComplete, which the director calls exactly once per routed
request (also on error and client disconnect), removes it. ``running(name)`` is the count,
``min_running_tpot_slo(name)`` the tightest TPOT objective among them (the Go EPP caps a
new request's TPOT budget with it: a new request must not slow down one already promised a
faster pace).

Each routed request gets a ticket from one counter that never repeats, kept in its
``plugin_state``. Removing by ticket makes completion idempotent, and a request routed to
an endpoint that has since left the pool and rejoined cannot remove a newer request's
entry. An endpoint's entry goes when its last request ends or when it leaves the pool, so
the tracker holds only endpoints with requests in flight. No parameters.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from epp.datalayer.endpoint import Endpoint
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.requestcontrol import ResponseInfo
from epp.framework.scheduling import CycleState, SchedulingResult
from epp.requests.types import InferenceRequest

__all__ = ["SloRequestTracker"]


@dataclass(frozen=True, slots=True)
class _Ticket:
    endpoint: str
    number: int


class SloRequestTracker(BasePlugin):
    """Tracks the requests running on each endpoint (PreRequest adds, ResponseComplete removes)."""

    TYPE = "slo-request-tracker"

    def __init__(self, name: str, params: None, handle: Handle) -> None:
        super().__init__(name, params, handle)
        # endpoint name → ticket number → the request's TPOT objective (None when it has none)
        self._running: dict[str, dict[int, float | None]] = {}
        self._tickets = itertools.count(1)
        self._state_key = f"{self.TYPE}/{name}"
        handle.pool.add_listener(self)

    def pre_request(self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult) -> None:
        endpoint = result.primary.endpoints[0].name
        ticket = _Ticket(endpoint, next(self._tickets))
        self._running.setdefault(endpoint, {})[ticket.number] = request.slo_tpot_ms
        request.plugin_state[self._state_key] = ticket

    def response_complete(self, request: InferenceRequest, response: ResponseInfo) -> None:
        ticket = request.plugin_state.pop(self._state_key, None)
        if not isinstance(ticket, _Ticket):
            return
        running = self._running.get(ticket.endpoint)
        if running is None:
            return
        running.pop(ticket.number, None)
        if not running:
            del self._running[ticket.endpoint]

    def running(self, endpoint_name: str) -> int:
        """Requests this picker routed to ``endpoint_name`` that have not completed."""
        return len(self._running.get(endpoint_name, ()))

    def min_running_tpot_slo(self, endpoint_name: str) -> float | None:
        """The tightest TPOT objective (ms) among the endpoint's running requests; None when none states one."""
        objectives = [slo for slo in self._running.get(endpoint_name, {}).values() if slo is not None]
        return min(objectives, default=None)

    def debug_sizes(self) -> dict[str, int]:
        """What the tracker holds, for ``/debug/state``: all 0 when nothing is in flight."""
        return {"endpoints": len(self._running), "requests": sum(len(r) for r in self._running.values())}

    def endpoint_added(self, endpoint: Endpoint) -> None:
        return None

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self._running.pop(endpoint.name, None)
