"""``inflight-load-producer``: what this picker has sent to each endpoint that has not finished.

Unlike scraped queue lengths (up to one scrape interval old), these counts change the
moment a request is routed, so a burst does not all land on the endpoint that looked
idle at the last scrape. PreRequest adds the request to its primary endpoint;
ResponseComplete (also called when the client disconnects) removes exactly what was
added, so counts cannot drift.

Per endpoint it keeps:

- ``requests`` and ``tokens`` in flight (the Go EPP's fields). Token estimate: input =
  prompt bytes / 4 (at least 1; body bytes when there is no prompt text); output = the
  request's ``max_tokens`` (or ``max_completion_tokens``) when given, else 1.5 × input.
- ``prefill_backlog``: prompt tokens of in-flight requests that have not produced their
  first response byte yet, excluding the blocks the endpoint already held (from the
  prefix match, when a prefix producer ran). A request leaves the backlog at its first
  response chunk. This is the work standing between a new request and its first token,
  which neither queue length (a prefilling request counts as running) nor KV usage shows.

It publishes an ``InFlightLoad`` (``epp/framework/attributes.py``) under
``INFLIGHT_LOAD_KEY``: a read-only view of these counts, built once, so consumers read
typed values and never this class. No parameters.

With shared state between picker replicas (``epp/sharedstate``), ``local_load`` is what
this replica adds (replicated to the others) and ``set_remote_load`` hands in the other
replicas' sums; from then on the published view reads this replica's counts plus theirs,
kept in separate totals maps so the request path still reads one dict per value. Only
local counts are ever released, so a dead replica's load leaves with its expiring record.
``watch_local`` names each endpoint that was just routed to or whose prefill backlog just
changed, so replication can push the change at once: a unique prompt prefills in ~150 ms,
less than one 200 ms exchange round, so a backlog that waits for the round is mostly gone
before the others see it. A completion after the first byte changes only requests and
tokens, which wait for the round (a third fewer pushes).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from epp.datalayer.endpoint import Endpoint
from epp.framework.attributes import INFLIGHT_LOAD_KEY, InFlightLoad, prefix_match, request_prompt_tokens
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.requestcontrol import ResponseInfo
from epp.framework.scheduling import CycleState, SchedulingResult
from epp.requests.types import InferenceRequest

__all__ = ["INFLIGHT_LOAD_KEY", "EndpointLoad", "InFlightLoadProducer", "estimate_tokens", "request_prompt_tokens"]

# (requests, tokens, prefill backlog) of one endpoint
EndpointLoad = tuple[int, int, int]

_OUTPUT_RATIO = 1.5


def estimate_tokens(request: InferenceRequest) -> int:
    input_tokens = request_prompt_tokens(request)
    limit = request.body.get("max_tokens") or request.body.get("max_completion_tokens")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return input_tokens + limit
    return input_tokens + round(input_tokens * _OUTPUT_RATIO)


@dataclass(slots=True)
class _Routed:
    """What one request added to its endpoint, so exactly that is removed again."""

    endpoint: str
    tokens: int
    prefill: int
    membership: int
    started: bool = False


class InFlightLoadProducer(BasePlugin):
    """Counts requests, tokens and prefill backlog in flight per endpoint (picker-side, instantly fresh)."""

    TYPE = "inflight-load-producer"
    PRODUCES = frozenset({INFLIGHT_LOAD_KEY})

    def __init__(self, name: str, params: None, handle: Handle) -> None:
        super().__init__(name, params, handle)
        self._requests: dict[str, int] = {}
        self._tokens: dict[str, int] = {}
        self._prefill: dict[str, int] = {}
        # Which membership of each name the current counts belong to, so a request routed to
        # an earlier membership of the same name (it left and rejoined since) cannot release
        # load added after it rejoined. Tokens come from one counter that never repeats, and
        # an entry lives exactly as long as its name's counts: until the endpoint leaves or
        # its last request completes. So all four maps hold only endpoints with load in
        # flight, however many names the pool has ever seen.
        self._membership: dict[str, int] = {}
        self._tokens_issued = itertools.count(1)
        self._state_key = f"{self.TYPE}/{name}"
        # The counters are only ever updated in place, so this one view stays current.
        self.load = InFlightLoad(self._requests, self._tokens, self._prefill)
        # Other replicas' load and the local + remote totals; None until sharing starts.
        self._remote: dict[str, EndpointLoad] | None = None
        self._totals: tuple[dict[str, int], dict[str, int], dict[str, int]] = ({}, {}, {})
        self._on_change: Callable[[str], None] | None = None
        handle.pool.add_listener(self)

    async def prepare_data(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> None:
        cycle[INFLIGHT_LOAD_KEY] = self.load

    def pre_request(self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult) -> None:
        endpoint = result.primary.endpoints[0].name
        prefill = prefix_match(cycle).uncached_tokens(endpoint, request_prompt_tokens(request))
        membership = self._membership.get(endpoint)
        if membership is None:
            membership = self._membership[endpoint] = next(self._tokens_issued)
        routed = _Routed(endpoint, estimate_tokens(request), prefill, membership)
        self._requests[endpoint] = self._requests.get(endpoint, 0) + 1
        self._tokens[endpoint] = self._tokens.get(endpoint, 0) + routed.tokens
        self._prefill[endpoint] = self._prefill.get(endpoint, 0) + prefill
        request.plugin_state[self._state_key] = routed
        self._changed(endpoint)

    def _current(self, routed: _Routed) -> bool:
        return self._membership.get(routed.endpoint) == routed.membership

    def response_streaming(self, request: InferenceRequest, response: ResponseInfo, chunk: bytes) -> None:
        routed = request.plugin_state.get(self._state_key)
        if routed is not None and not routed.started:
            routed.started = True
            if self._current(routed):
                self._prefill[routed.endpoint] -= routed.prefill
                self._changed(routed.endpoint)

    def response_complete(self, request: InferenceRequest, response: ResponseInfo) -> None:
        routed = request.plugin_state.pop(self._state_key, None)
        if routed is None or not self._current(routed):
            return
        endpoint = routed.endpoint
        remaining = self._requests[endpoint] - 1
        if remaining == 0:
            # Its last request: everything it added is released, so the name is forgotten.
            self._forget(endpoint, urgent=not routed.started)
            return
        self._requests[endpoint] = remaining
        self._tokens[endpoint] -= routed.tokens
        if not routed.started:
            self._prefill[endpoint] -= routed.prefill
        self._changed(endpoint, urgent=not routed.started)

    def _forget(self, endpoint: str, urgent: bool = False) -> None:
        self._requests.pop(endpoint, None)
        self._tokens.pop(endpoint, None)
        self._prefill.pop(endpoint, None)
        self._membership.pop(endpoint, None)
        self._changed(endpoint, urgent)

    def _changed(self, endpoint: str, urgent: bool = True) -> None:
        if self._remote is not None:
            self._sync_total(endpoint)
        if urgent and self._on_change is not None:
            self._on_change(endpoint)

    def watch_local(self, on_change: Callable[[str], None] | None) -> None:
        """Call ``on_change(endpoint)`` (on the request path: it must only take note) on a route or backlog change."""
        self._on_change = on_change

    def local_load(self) -> dict[str, EndpointLoad]:
        """This replica's own load per endpoint with anything in flight, for the other replicas."""
        return {ep: (n, self._tokens.get(ep, 0), self._prefill.get(ep, 0)) for ep, n in self._requests.items()}

    def set_remote_load(self, remote: Mapping[str, EndpointLoad]) -> None:
        """The other replicas' summed load; the published view becomes local + remote from now on."""
        if self._remote is None:
            self.load = InFlightLoad(*self._totals)
        self._remote = dict(remote)
        for total in self._totals:
            total.clear()
        for endpoint in self._remote.keys() | self._requests.keys():
            self._sync_total(endpoint)

    def _sync_total(self, endpoint: str) -> None:
        assert self._remote is not None
        requests, tokens, prefill = self._totals
        r, t, p = self._remote.get(endpoint, (0, 0, 0))
        r += self._requests.get(endpoint, 0)
        if r <= 0:
            requests.pop(endpoint, None)
            tokens.pop(endpoint, None)
            prefill.pop(endpoint, None)
            return
        requests[endpoint] = r
        tokens[endpoint] = t + self._tokens.get(endpoint, 0)
        prefill[endpoint] = p + self._prefill.get(endpoint, 0)

    def debug_sizes(self) -> dict[str, int]:
        """What this producer holds, for ``/debug/state``: all back to 0 when idle."""
        sizes = {"endpoints": len(self._requests), "memberships": len(self._membership),
                 "requests": sum(self._requests.values()), "tokens": sum(self._tokens.values()),
                 "prefillBacklog": sum(self._prefill.values())}
        if self._remote is not None:
            sizes["remoteRequests"] = sum(r for r, _, _ in self._remote.values())
        return sizes

    def endpoint_added(self, endpoint: Endpoint) -> None:
        return None

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self._forget(endpoint.name)
