"""Passive health checking: take an endpoint whose responses keep failing out of rotation.

Scrapes (``Collector``) only say whether ``/metrics`` answers. A replica can serve
``/metrics`` fine and fail every inference request; its fast failures keep its queue
empty, so the load scorers send it *more* than its share (issue 7, defect 13: one of three
simulators in ``error`` mode took 24% of the traffic, every request a 500). The response
status the picker already sees for each routed request is the signal used here, with the
rules of Envoy's outlier detection (``consecutive_5xx``, ``base_ejection_time``,
``max_ejection_time``, ``max_ejection_percent``):

* a status of 500 or more, or 0 (no response at all), is a failure; anything else (2xx to
  4xx, 429 included: overloaded is not broken) is a success and clears the count;
* ``consecutive_failures`` failures in a row eject the endpoint for ``base_ejection_time``
  times the number of ejections in a row, capped at ``max_ejection_time``;
* when the time is up it gets traffic again on probation: its first result decides, a
  failure ejects it again at once (for longer), a success puts it back for good;
* results that arrive while it is ejected are ignored: they come from requests routed
  before the ejection and say nothing about now;
* never more than ``max_ejection_percent`` of the pool is ejected (at least one endpoint
  may be, in a pool of two or more), and never the last available endpoint: when
  everything fails, routing somewhere beats answering 503 to everyone. ``routable`` keeps
  the same promise for a request's candidates.

Nothing runs in the background: an ejection ends by the clock, read when candidates are
chosen. One log line per ejection and one per return (on the first success after it).

What the picker sees through real Envoy (1.40, ``config/envoy.yaml``: ORIGINAL_DST cluster,
``FULL_DUPLEX_STREAMED``, router with ``suppress_envoy_headers``), measured with the e2e
stack:

* upstream answers 500 (simulator ``error`` mode): ``response_headers`` with ``:status``
  500 and the upstream's own headers (``server: Python/3.11 aiohttp``, ``date``), the body,
  then an empty chunk with ``end_of_stream``.
* connection refused (simulator SIGKILLed, or ``down`` mode): Envoy's local reply goes
  through ext_proc like a response: ``response_headers`` ``:status`` 503 with only
  ``content-length``, ``content-type: text/plain`` and the route's added headers
  (``x-upstream-host``), then one chunk ``upstream connect error or disconnect/reset before
  headers. reset reason: remote connection failure`` with ``end_of_stream``.
* upstream timeout (simulator SIGSTOPped, route ``timeout: 2s``): the same shape with 504
  and ``upstream request timeout``. With the shipped config's route timeout (86400 s) a hung
  replica yields nothing until the client gives up, and a client that gives up is not the
  endpoint's verdict: scrape readiness (``--unready-after-failures``) covers that case.
* no ``x-envoy-*`` header marks a local reply (none is added even without
  ``suppress_envoy_headers``); what tells it apart is the absence of the upstream's
  ``date``/``server`` headers (Envoy adds its own after the filter chain) and the
  ``text/plain`` body. Both kinds are the endpoint's failure, so both count here. The
  director records each request once, at its response headers; a stream that ends before
  any (the client left, Envoy reset it) is not the endpoint's verdict and is not recorded.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.datalayer.pool import EndpointPool

__all__ = ["EjectionPolicy", "PassiveHealth", "is_failure", "outlier_view", "routable"]

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class EjectionPolicy:
    """Envoy's outlier-detection knobs, with Envoy's defaults except the ejection limit.

    ``consecutive_failures`` 0 turns passive health checking off. Envoy's default
    ``max_ejection_percent`` is 10%, which in a pool of a few replicas rounds to the single
    endpoint Envoy always allows; 50% lets two of four go.
    """

    consecutive_failures: int = 5
    base_ejection_time: float = 10.0  # seconds
    max_ejection_time: float = 300.0  # seconds
    max_ejection_percent: float = 50.0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 0:
            raise ValueError("consecutive_failures must be >= 0 (0 disables ejection)")
        if not (math.isfinite(self.base_ejection_time) and self.base_ejection_time > 0):
            raise ValueError("base_ejection_time must be a positive number of seconds")
        if not (math.isfinite(self.max_ejection_time) and self.max_ejection_time > 0):
            raise ValueError("max_ejection_time must be a positive number of seconds")
        if not 0 < self.max_ejection_percent <= 100:
            raise ValueError("max_ejection_percent must be in (0, 100]")

    @property
    def enabled(self) -> bool:
        return self.consecutive_failures > 0

    def ejection_time(self, ejections_in_a_row: int) -> float:
        # As Envoy: the cap is never below the base time.
        return min(self.base_ejection_time * ejections_in_a_row, max(self.base_ejection_time, self.max_ejection_time))


def is_failure(status: int) -> bool:
    """5xx, or no valid status at all (a missing or unparsable ``:status`` reads as 0)."""
    return status >= 500 or status < 100


def routable(endpoints: Sequence[Endpoint], now: float) -> list[Endpoint]:
    """The endpoints a request may go to: available ones, else ready ones, else all of them.

    Falling back rather than refusing: if every allowed endpoint looks down or ejected,
    one of them may still answer, and a 503 for every request certainly does not.
    """
    available = [ep for ep in endpoints if ep.available(now)]
    if available:
        return available
    ready = [ep for ep in endpoints if ep.ready]
    return ready or list(endpoints)


def outlier_view(endpoint: Endpoint, now: float) -> dict[str, Any]:
    """The passive-health state of one endpoint, for ``/debug/endpoints`` (JSON-safe)."""
    state = endpoint.outlier
    return {
        "ejected": endpoint.ejected(now),
        "ejectedForSeconds": round(max(0.0, state.ejected_until - now), 3),
        "consecutiveFailures": state.consecutive_failures,
        "ejectionsInARow": state.ejections_in_a_row,
        "onProbation": state.on_probation,
    }


class PassiveHealth:
    """Ejects endpoints from the response statuses of the requests routed to them.

    One per picker. ``record`` is called once per routed request when its outcome is known;
    ``routable`` (module level) is what candidate selection reads. ``on_eject`` is called
    once per ejection (the ejection counter metric). Concurrency: event-loop owned, like the
    pool; the state lives on each ``Endpoint`` (``Endpoint.outlier``).
    """

    def __init__(
        self,
        pool: EndpointPool,
        policy: EjectionPolicy | None = None,
        on_eject: Callable[[Endpoint], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.policy = policy or EjectionPolicy()
        self.on_eject = on_eject
        self.clock = clock

    def record(self, endpoint: Endpoint, status: int, now: float | None = None) -> None:
        """Account for one routed request's outcome (``status`` 0: no response at all)."""
        policy = self.policy
        if not policy.enabled:
            return
        if now is None:
            now = self.clock()
        state = endpoint.outlier
        if now < state.ejected_until:
            return
        if not is_failure(status):
            if state.on_probation:
                log.info("endpoint %s is back in rotation: answered %d after being ejected %.1fs",
                         endpoint.name, status, now - state.ejected_at)
            state.consecutive_failures = 0
            state.ejections_in_a_row = 0
            state.on_probation = False
            state.held_by_limit = False
            return
        state.consecutive_failures += 1
        if state.on_probation or state.consecutive_failures >= policy.consecutive_failures:
            self._eject(endpoint, status, now)

    def _eject(self, endpoint: Endpoint, status: int, now: float) -> None:
        state = endpoint.outlier
        if not self._may_eject(endpoint, now):
            if not state.held_by_limit:
                state.held_by_limit = True
                log.warning("endpoint %s failed %d requests in a row (last status %d) but stays in rotation: "
                            "ejecting it would leave too few endpoints (max %g%% of the pool, never the last one)",
                            endpoint.name, state.consecutive_failures, status, self.policy.max_ejection_percent)
            return
        state.ejections_in_a_row += 1
        duration = self.policy.ejection_time(state.ejections_in_a_row)
        if state.on_probation:
            log.warning("endpoint %s ejected again for %gs: its first request after the last ejection failed "
                        "(status %d; ejection %d in a row)", endpoint.name, duration, status, state.ejections_in_a_row)
        else:
            log.warning("endpoint %s ejected for %gs after %d failed requests in a row (last status %d)",
                        endpoint.name, duration, state.consecutive_failures, status)
        state.ejected_at = now
        state.ejected_until = now + duration
        state.consecutive_failures = 0
        state.on_probation = True
        state.held_by_limit = False
        if self.on_eject is not None:
            self.on_eject(endpoint)

    def _may_eject(self, endpoint: Endpoint, now: float) -> bool:
        members = self.pool.endpoints()
        if not any(ep is not endpoint and ep.available(now) for ep in members):
            return False
        ejected = sum(1 for ep in members if ep.ejected(now))
        allowed = max(1, math.floor(len(members) * self.policy.max_ejection_percent / 100))
        return ejected < allowed
