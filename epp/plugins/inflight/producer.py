"""``inflight-load-producer``: requests and tokens this picker has sent to each endpoint
that have not finished yet.

Unlike scraped queue lengths (up to one scrape interval old), these counts change the
moment a request is routed, so a burst does not all land on the endpoint that looked
idle at the last scrape. PreRequest adds the request to its primary endpoint;
ResponseComplete (also called when the client disconnects) removes exactly what was
added, so counts cannot drift.

Token estimate per request: input = prompt bytes / 4 (at least 1; request body bytes
when there is no prompt text); output = the request's ``max_tokens`` (or
``max_completion_tokens``) when given, else 1.5 × input, as in the Go EPP's estimator.
No parameters.
"""

from __future__ import annotations

from epp.datalayer.endpoint import Endpoint
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.requestcontrol import ResponseInfo
from epp.framework.scheduling import CycleState, SchedulingResult
from epp.requests.types import InferenceRequest

__all__ = ["INFLIGHT_LOAD_KEY", "InFlightLoadProducer", "estimate_tokens"]

INFLIGHT_LOAD_KEY = "InFlightLoadKey"
_OUTPUT_RATIO = 1.5
_CHARS_PER_TOKEN = 4


def estimate_tokens(request: InferenceRequest) -> int:
    size = len(request.prompt) or request.size_bytes
    input_tokens = max(1, size // _CHARS_PER_TOKEN)
    limit = request.body.get("max_tokens") or request.body.get("max_completion_tokens")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return input_tokens + limit
    return input_tokens + round(input_tokens * _OUTPUT_RATIO)


class InFlightLoadProducer(BasePlugin):
    """Counts requests and estimated tokens in flight per endpoint (picker-side, instantly fresh)."""

    TYPE = "inflight-load-producer"
    PRODUCES = frozenset({INFLIGHT_LOAD_KEY})

    def __init__(self, name: str, params: None, handle: Handle) -> None:
        super().__init__(name, params, handle)
        self._requests: dict[str, int] = {}
        self._tokens: dict[str, int] = {}
        # Bumped when an endpoint leaves the pool, so a request routed to an earlier
        # membership of the same name cannot release load added after it rejoined.
        self._epoch: dict[str, int] = {}
        self._state_key = f"{self.TYPE}/{name}"
        handle.pool.add_listener(self)

    def requests(self, endpoint: str) -> int:
        return self._requests.get(endpoint, 0)

    def tokens(self, endpoint: str) -> int:
        return self._tokens.get(endpoint, 0)

    async def prepare_data(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> None:
        cycle[INFLIGHT_LOAD_KEY] = self

    def pre_request(self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult) -> None:
        endpoint = result.primary.endpoints[0].name
        tokens = estimate_tokens(request)
        self._requests[endpoint] = self._requests.get(endpoint, 0) + 1
        self._tokens[endpoint] = self._tokens.get(endpoint, 0) + tokens
        request.plugin_state[self._state_key] = (endpoint, tokens, self._epoch.get(endpoint, 0))

    def response_complete(self, request: InferenceRequest, response: ResponseInfo) -> None:
        added = request.plugin_state.pop(self._state_key, None)
        if added is None:
            return
        endpoint, tokens, epoch = added
        if endpoint in self._requests and self._epoch.get(endpoint, 0) == epoch:
            self._requests[endpoint] -= 1
            self._tokens[endpoint] -= tokens

    def endpoint_added(self, endpoint: Endpoint) -> None:
        return None

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self._requests.pop(endpoint.name, None)
        self._tokens.pop(endpoint.name, None)
        self._epoch[endpoint.name] = self._epoch.get(endpoint.name, 0) + 1
