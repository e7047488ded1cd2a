"""Request-lifecycle extension points, called by the director in this order:

1. ``DataProducer.prepare_data`` (before scheduling, per request): computes data that
   filters and scorers read from the cycle state, e.g. prefix matches per endpoint.
   Producers run in dependency order. An exception is logged and the request continues
   without that data (scorers must tolerate a missing key by scoring neutrally).
2. ``Admitter.admit`` (after data, before scheduling): raise a ``PickerError`` to reject;
   it reads what the producers wrote from the cycle state (e.g. latency predictions).
3. ``PreRequest.pre_request`` (after the destination is chosen, before Envoy is told):
   record what the request will cost the endpoint (in-flight counts, prefix ownership).
4. ``ResponseReceived.response_received`` when the model server's headers arrive.
5. ``ResponseStreaming.response_streaming`` for each response body chunk.
6. ``ResponseComplete.response_complete`` exactly once per request that reached
   ``pre_request``: at the end of the response, or when the stream ends early (client
   disconnect, Envoy reset, model-server error). Plugins release per-request state here;
   it must be idempotent-safe and must not raise.

Hooks 3-6 are synchronous and must be cheap: they run on the event loop, per request or
per chunk. An exception from hooks 3-6 is logged and swallowed: a bookkeeping plugin
must never fail a request that has already been routed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from epp.datalayer.endpoint import Endpoint
    from epp.framework.scheduling import CycleState, SchedulingResult
    from epp.requests.types import InferenceRequest

__all__ = [
    "Admitter",
    "DataProducer",
    "PreRequest",
    "ResponseComplete",
    "ResponseInfo",
    "ResponseReceived",
    "ResponseStreaming",
    "Usage",
]


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass(slots=True)
class ResponseInfo:
    """What the picker knows about a response so far.

    Attributes:
        endpoint: the endpoint the request was sent to (primary destination).
        status: HTTP status from the response headers (0 until they arrive).
        streaming: the response is server-sent events.
        headers: response headers, lower-case names.
        first_chunk_at: ``time.monotonic()`` of the first body chunk (for TTFT).
        body_bytes: response body bytes seen so far.
        usage: token usage, once the body (or the final SSE usage chunk) is parsed.
        completed: the response ended normally (end of stream seen).
        set_headers: response headers to set before they reach the client; only what
            ``ResponseReceived`` hooks add here is applied (later hooks are too late).
    """

    endpoint: Endpoint | None = None
    status: int = 0
    streaming: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    first_chunk_at: float | None = None
    body_bytes: int = 0
    usage: Usage | None = None
    completed: bool = False
    set_headers: list[tuple[str, str]] = field(default_factory=list)


@runtime_checkable
class DataProducer(Protocol):
    async def prepare_data(
        self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]
    ) -> None: ...


@runtime_checkable
class Admitter(Protocol):
    async def admit(self, request: InferenceRequest, endpoints: list[Endpoint], cycle: CycleState) -> None: ...


@runtime_checkable
class PreRequest(Protocol):
    def pre_request(
        self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult
    ) -> None: ...


@runtime_checkable
class ResponseReceived(Protocol):
    def response_received(self, request: InferenceRequest, response: ResponseInfo) -> None: ...


@runtime_checkable
class ResponseStreaming(Protocol):
    def response_streaming(
        self, request: InferenceRequest, response: ResponseInfo, chunk: bytes
    ) -> None: ...


@runtime_checkable
class ResponseComplete(Protocol):
    def response_complete(self, request: InferenceRequest, response: ResponseInfo) -> None: ...
