"""The ext_proc stream state machine: one gRPC stream is one HTTP request.

Transport only: it decodes Envoy's messages, reassembles the request body, asks the
director for a decision and encodes the answer. Request body modes, learnt from
``protocol_config`` on the first message:

- FULL_DUPLEX_STREAMED (the GIE default): the body arrives in chunks, the decision is sent
  with the last one, and the body is sent back (with its ``content-length``);
- BUFFERED: the body arrives whole in one message; the header mutation rides on the body
  response;
- anything else (STREAMED, BUFFERED_PARTIAL) cannot carry a destination before the headers
  leave Envoy, so such requests are refused with a 500 that names the setting to change.

Response bodies pass through chunk by chunk as they arrive, SSE included. A response body
is rewritten (the model name given back to the client) only in FULL_DUPLEX_STREAMED and
BUFFERED response modes, where its length may change.

The fast Envoy config (config/envoy-fast.yaml) takes the response off the client's path.
Its routing filter says so with the gRPC metadata ``x-epp-response-path: observed`` and
allows mode overrides; the picker then answers the destination with a ``mode_override``
that sends nothing of the response to the routing stream, ends that stream, and parks the
request in ``ObservedRequests``. A second ext_proc filter in ``observability_mode`` sends
the response headers, chunks and trailers on their own stream without waiting for
answers; that stream (``observability_mode`` set on its messages) claims the request by
its ``x-request-id`` and runs the same director hooks. A request whose response body is
rewritten (the model name given back) stays on the routing stream, as in the standard
config.

Failure handling: a ``PickerError`` becomes an ImmediateResponse and ends the stream; any
other exception becomes a 500 and a log line. When the stream ends for any reason
(Envoy reset, client gone) the director's ``finish`` runs, so plugins release state.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as modes
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp.director import Director
from epp.errors import InternalError, PayloadTooLarge, PickerError, ResourceExhausted
from epp.hookerrors import ThrottledLog
from epp.request_context import ObservedRequests, RequestContext
from epp.server import messages

__all__ = ["CONTROL_HEADERS", "BodyBudget", "ExtProcServicer", "RESPONSE_PATH_METADATA", "SUBSET_KEY",
           "SUBSET_NAMESPACE"]

log = logging.getLogger(__name__)

SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
SERVED_KEY = "x-gateway-destination-endpoint-served"
REQUEST_ID_HEADER = "x-request-id"
# Protocol headers meant for the picker: stripped before the request reaches a model
# server, and a client cannot pick its own destination by sending them.
CONTROL_HEADERS = (
    "x-gateway-inference-fairness-id",
    "x-gateway-inference-objective",
    "x-gateway-model-name-rewrite",
    "x-gateway-destination-endpoint-subset",
    "x-gateway-destination-endpoint-served",
)
_FULL_DUPLEX = modes.ProcessingMode.FULL_DUPLEX_STREAMED
_BUFFERED = modes.ProcessingMode.BUFFERED
_REQUEST_MODES = (_FULL_DUPLEX, _BUFFERED)
# A client's x-request-id longer than this (or with control characters) is replaced by a
# generated one: the id reaches log lines and the decision log's keys.
MAX_REQUEST_ID_LENGTH = 128
_FAILURES = ThrottledLog(log)
_MAX_SERVED_LENGTH = 256  # an ip:port list, from the gateway; bounded all the same
# gRPC metadata the fast config's routing filter sends (grpc_service.initial_metadata): the
# response is observed on a second stream, and the filter takes a mode override.
RESPONSE_PATH_METADATA = ("x-epp-response-path", "observed")
# How long an observation stream waits for its request to be parked. From one Envoy it is
# always parked first (Envoy opens the observation after it has the destination); an id
# that is never parked (routed by another picker replica) is ignored after this wait.
OBSERVATION_GRACE_SECONDS = 1.0


class ProtocolError(InternalError):
    """The ext_proc peer broke the message order (Envoy never does; anything on the port can)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"ext_proc protocol error: {message}")


class BodyBudget:
    """Request-body bytes held across all streams, bounded (``--max-inflight-body-bytes``).

    Each stream holds its body from the first chunk until the request is routed. Without a
    bound, many concurrent large bodies (each under the per-request limit) could exhaust
    memory; past it new bodies are refused with 429 while the ones held finish. Both body
    refusals are counted through ``refused(reason)``.
    """

    __slots__ = ("limit", "held", "refused")

    def __init__(self, limit: int, refused: Callable[[str], None] = lambda reason: None) -> None:
        self.limit = limit
        self.held = 0
        self.refused = refused

    def take(self, stream_size: int, max_body: int, size: int) -> None:
        """Hold ``size`` more bytes for a stream already holding ``stream_size``."""
        if stream_size + size > max_body:
            self.refused("too_large")
            raise PayloadTooLarge(f"request body exceeds {max_body} bytes")
        if self.held + size > self.limit:
            self.refused("budget")
            raise ResourceExhausted("request bodies held by the picker exceed its budget; retry later")
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size


def _request_id(headers: dict[str, str]) -> str | None:
    value = headers.get(REQUEST_ID_HEADER)
    if not value or len(value) > MAX_REQUEST_ID_LENGTH or not value.isprintable():
        return None
    return value


def _headers(message: pb.HttpHeaders) -> dict[str, str]:
    out: dict[str, str] = {}
    for h in message.headers.headers:
        raw = h.raw_value  # each read of a upb field builds a new object
        out[h.key.lower()] = raw.decode("utf-8", "replace") if raw else h.value
    return out


def _subset_hint(request: pb.ProcessingRequest) -> list[str] | None:
    namespace = request.metadata_context.filter_metadata.get(SUBSET_NAMESPACE)
    if namespace is None or SUBSET_KEY not in namespace.fields:
        return None
    value = namespace.fields[SUBSET_KEY]
    if value.HasField("list_value"):
        return [v.string_value for v in value.list_value.values if v.string_value]
    return [part.strip() for part in value.string_value.split(",") if part.strip()]


def _served_endpoint(request: pb.ProcessingRequest) -> str:
    """The endpoint that served the request, as a gateway reports it in ``envoy.lb`` metadata.

    The GIE protocol carries it as metadata on the response path; the picker hands it to
    response hooks as the header of the same name (a data plane may also send the header).
    """
    namespace = request.metadata_context.filter_metadata.get(messages.DESTINATION_NAMESPACE)
    if namespace is None or SERVED_KEY not in namespace.fields:
        return ""
    return str(namespace.fields[SERVED_KEY].string_value)[:_MAX_SERVED_LENGTH]


def _ends_exchange(request: pb.ProcessingRequest, kind: str | None) -> bool:
    """Whether ``request`` is the last message Envoy sends on the stream: the response is complete."""
    if kind == "response_trailers":
        return True
    if kind == "response_body":
        return bool(request.response_body.end_of_stream)
    if kind == "response_headers":
        return bool(request.response_headers.end_of_stream)
    return False


class _Stream:
    """State of one ext_proc stream."""

    __slots__ = ("director", "max_body", "budget", "request_mode", "response_mode", "headers", "chunks",
                 "body_size", "ctx", "subset", "generated_id", "decided", "pending", "responded",
                 "abandoned", "exchange_done", "observed", "handed_off")

    def __init__(self, director: Director, max_body: int, budget: BodyBudget,
                 observed: ObservedRequests | None = None) -> None:
        self.director = director
        # Set with the fast config: routed requests are handed to the observation stream.
        self.observed = observed
        self.handed_off = False
        self.max_body = max_body
        self.budget = budget
        self.request_mode: int = _FULL_DUPLEX
        self.response_mode: int = _FULL_DUPLEX
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.body_size = 0
        self.ctx: RequestContext | None = None
        self.subset: list[str] | None = None
        self.generated_id = False
        self.decided = False
        # Set when the request body is complete: the caller then awaits ``decide()``.
        # Every other message is answered synchronously, without a coroutine per message.
        self.pending: str | None = None
        self.responded = False  # response headers seen (once per request)
        self.abandoned = False  # a response came before the request was routed
        self.exchange_done = False  # the last message Envoy sends has been answered: end the stream

    def handle(self, request: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        kind = request.WhichOneof("request")
        # Not after an early reply (``abandoned``): a message out of order must still be refused.
        self.exchange_done = self.decided and _ends_exchange(request, kind)
        if kind == "request_headers":
            if request.HasField("protocol_config"):
                self.request_mode = request.protocol_config.request_body_mode
                self.response_mode = request.protocol_config.response_body_mode
            return self._request_headers(request)
        if kind == "request_body":
            if self.ctx is None:
                raise ProtocolError("request body before request headers")
            if self.abandoned:
                raise ProtocolError("request body after a response")
            body = request.request_body
            return self._request_body(body.body, body.end_of_stream)
        if kind is None:
            raise ProtocolError("a message without a request or response part")
        if kind.startswith("response_") and not self.decided:
            # Envoy's own local reply (a timeout, its buffer limit) can come before the request
            # is routed: pass it on untouched. The request is never routed after it, so
            # nothing is held that the stream's end would not release.
            self.abandoned = True
            return self._pass_response(request, kind)
        if kind == "response_body":
            return self._response_body(request.response_body.body, request.response_body.end_of_stream)
        if kind == "response_headers":
            if self.responded:
                raise ProtocolError("a second set of response headers")
            self.responded = True
            return self._response_headers(request)
        if kind == "request_trailers":
            if self.ctx is None:
                raise ProtocolError("request trailers before request headers")
            if self.abandoned:
                raise ProtocolError("request trailers after a response")
            if self.decided:
                return [messages.trailers_response(request=True)]
            return self._request_body(b"", False, trailers=True)
        if kind == "response_trailers":
            tail = self.director.response_trailers(self.ctx) if self.ctx is not None else b""
            # A model name held back at a chunk boundary goes out before the trailers.
            held = messages.streamed_body(tail, False, request=False) if tail else []
            return [*held, messages.trailers_response(request=False)]
        raise InternalError(f"unexpected ext_proc message {kind!r}")

    def _pass_response(self, request: pb.ProcessingRequest, kind: str) -> list[pb.ProcessingResponse]:
        if kind == "response_headers":
            return [messages.continue_response_headers()]
        if kind == "response_body":
            body = request.response_body
            if self.response_mode == _FULL_DUPLEX:
                return messages.streamed_body(body.body, body.end_of_stream, request=False)
            return [messages.continue_response_body()]
        return [messages.trailers_response(request=False)]

    def _request_headers(self, request: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        if self.ctx is not None:
            # One stream is one HTTP request; a second would orphan the first one's state.
            raise ProtocolError("a second request on one stream")
        self.headers = _headers(request.request_headers)
        self.subset = _subset_hint(request)
        request_id = _request_id(self.headers)
        if request_id is None:
            request_id = str(uuid.uuid4())
            self.headers[REQUEST_ID_HEADER] = request_id
            self.generated_id = True
        self.ctx = RequestContext(request_id)
        if request.request_headers.end_of_stream:
            # No body to parse (e.g. GET /v1/models): any ready endpoint will do.
            endpoint = self.director.random_endpoint(self.subset)
            self.decided = True
            return [messages.request_headers_response([endpoint.hostport], self._extra_headers(None),
                                                      self._control_headers(), self._hand_off())]
        if self.request_mode not in _REQUEST_MODES:
            name = modes.ProcessingMode.BodySendMode.Name(self.request_mode)
            raise InternalError(f"ext_proc request_body_mode {name} cannot carry a destination; "
                                "configure FULL_DUPLEX_STREAMED (or BUFFERED)")
        if self.request_mode == _BUFFERED:
            return [messages.continue_request_headers()]
        return []

    def _control_headers(self) -> list[str]:
        # Only those present: every removal is work for Envoy on every request.
        return [name for name in CONTROL_HEADERS if name in self.headers]

    def _extra_headers(self, body: bytes | None) -> list[tuple[str, str]]:
        """Headers to set besides the destination; ``body``: what is forwarded, if it has a length to state."""
        extra = []
        if self.generated_id:
            extra.append((REQUEST_ID_HEADER, self.headers[REQUEST_ID_HEADER]))
        if body is not None:
            extra.append(("content-length", str(len(body))))
        return extra

    def _request_body(self, chunk: bytes, end_of_stream: bool, trailers: bool = False
                      ) -> list[pb.ProcessingResponse]:
        if self.decided or self.pending:
            raise InternalError("ext_proc protocol error: request body after the request was routed")
        if chunk:
            self.budget.take(self.body_size, self.max_body, len(chunk))
            self.body_size += len(chunk)
            self.chunks.append(chunk)
        # BUFFERED mode sends the whole body in one message, with end_of_stream false when
        # trailers follow: that message is the complete body.
        if end_of_stream or trailers or self.request_mode == _BUFFERED:
            self.pending = "trailers" if trailers else "body"
        return []

    async def decide(self) -> list[pb.ProcessingResponse]:
        """Route the complete request; answers with the destination and the body to send on."""
        trailers = self.pending == "trailers"
        self.pending = None
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        assert self.ctx is not None  # handle() refuses a body before headers
        try:
            decision = await self.director.handle_request(self.ctx, self.headers, body, self.subset)
        finally:
            self.release_body()
        self.decided = True
        if self.request_mode == _BUFFERED:
            return [messages.buffered_request_body_response(decision.destinations, self._extra_headers(decision.body),
                                                            self._control_headers(), decision.body)]
        forward = decision.body if decision.body is not None else body
        extra = self._extra_headers(forward)
        override = self._hand_off()
        responses = [messages.request_headers_response(decision.destinations, extra, self._control_headers(),
                                                       override),
                     *messages.streamed_body(forward, end_of_stream=not trailers, request=True)]
        if trailers:
            responses.append(messages.trailers_response(request=True))
        return responses

    def _hand_off(self) -> modes.ProcessingMode | None:
        """With the fast config: the mode override that moves the response to the observation stream.

        Called when the destination is ready, before it is sent: the request is parked
        before Envoy can open the observation stream. The routing stream then ends (no
        response comes on it), so a picker that dies later cannot cut the response.
        """
        observed, ctx = self.observed, self.ctx
        if observed is None or ctx is None:
            return None
        if ctx.restorer is not None or self.request_mode != _FULL_DUPLEX:
            # The body must be rewritten on its way out (or, in BUFFERED mode, Envoy takes no
            # override after the headers): this response stays on the routing stream.
            observed.passed(ctx.request_id)
            return None
        observed.add(ctx)
        self.handed_off = True
        self.exchange_done = True
        return messages.RESPONSE_OBSERVED

    def release_body(self) -> None:
        """Give the body's bytes back to the budget (routed, refused or stream gone)."""
        self.budget.give(self.body_size)
        self.body_size = 0
        self.chunks = []

    def _response_headers(self, request: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        message = request.response_headers
        if self.ctx is not None:
            headers = _headers(message)
            served = _served_endpoint(request)
            if served:
                headers.setdefault(SERVED_KEY, served)
            self.director.response_headers(self.ctx, headers)
            if message.end_of_stream:
                self.director.finish(self.ctx, completed=True)
            return [messages.continue_response_headers(self.ctx.response.set_headers)]
        return [messages.continue_response_headers()]

    def _response_body(self, chunk: bytes, end_of_stream: bool) -> list[pb.ProcessingResponse]:
        rewrite = self.response_mode in _REQUEST_MODES  # modes in which the body length may change
        forward = chunk
        if self.ctx is not None:
            forward = self.director.response_chunk(self.ctx, chunk, end_of_stream, rewrite,
                                                   last=end_of_stream or self.response_mode == _BUFFERED)
        if self.response_mode == _FULL_DUPLEX:
            return messages.streamed_body(forward, end_of_stream, request=False)
        return [messages.continue_response_body(forward if forward is not chunk else None)]


class _Observation:
    """One observe-only stream (the fast config): the response of a request routed on another stream.

    Envoy never waits for an answer here, so none is sent. Chunks pass to the director
    unchanged (``rewrite=False``): a response that needs rewriting stays on its routing stream.
    """

    __slots__ = ("director", "ctx", "done")

    def __init__(self, director: Director) -> None:
        self.director = director
        self.ctx: RequestContext | None = None
        self.done = False

    def handle(self, request: pb.ProcessingRequest) -> None:
        ctx = self.ctx
        if ctx is None or ctx.finished:  # not ours, or released already (its TTL passed)
            return
        kind = request.WhichOneof("request")
        if kind == "response_body":
            body = request.response_body
            self.director.response_chunk(ctx, body.body, body.end_of_stream, rewrite=False)
            self.done = body.end_of_stream
        elif kind == "response_headers":
            message = request.response_headers
            headers = _headers(message)
            served = _served_endpoint(request)
            if served:
                headers.setdefault(SERVED_KEY, served)
            self.director.response_headers(ctx, headers)
            if message.end_of_stream:
                self.director.finish(ctx, completed=True)
                self.done = True
        elif kind == "response_trailers":
            self.director.response_trailers(ctx)
            self.done = True


def _observes_responses(context: grpc.aio.ServicerContext) -> bool:
    # grpc.aio's metadata items are (key, value) tuples.
    return RESPONSE_PATH_METADATA in (context.invocation_metadata() or ())


class ExtProcServicer(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]  # generated gRPC base: no types
    def __init__(self, director: Director, max_request_body: int = 64 * 1024 * 1024,
                 max_inflight_body_bytes: int = 1024 * 1024 * 1024, observed: ObservedRequests | None = None,
                 plain_errors: bool = False) -> None:
        self.director = director
        # The Go EPP's text/plain error bodies instead of OpenAI's JSON error object.
        self.plain_errors = plain_errors
        # Requests routed with the fast config, waiting for their observation stream.
        self.observed = observed if observed is not None else ObservedRequests(director.finish)
        self.max_request_body = max_request_body
        metrics = director.metrics
        refused = (lambda reason: metrics.request_body_refused.labels(reason).inc()) if metrics else (lambda _: None)
        self.budget = BodyBudget(max_inflight_body_bytes, refused)

    async def Process(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        # Async generator in, async generator out: reading and writing on the call itself
        # measured no cheaper (benchmarks/overhead/transport.py, noop-readwrite).
        stream = _Stream(self.director, self.max_request_body, self.budget,
                         self.observed if _observes_responses(context) else None)
        error: PickerError | None = None
        try:
            async for request in request_iterator:
                if stream.ctx is None and request.observability_mode:
                    await self._observe(request, request_iterator)
                    return
                try:
                    responses = stream.handle(request)
                    if stream.pending:
                        responses = await stream.decide()
                except PickerError as exc:
                    error = exc
                except Exception as exc:  # noqa: BLE001 - one request's bug must not kill the server
                    # Throttled: a hostile input that trips a bug must not log a traceback per request.
                    _FAILURES.exception(type(exc).__name__,
                                        f"request {stream.ctx.request_id if stream.ctx else '?'} failed")
                    error = InternalError(f"internal error: {type(exc).__name__}")
                if error is not None:
                    yield messages.immediate_response(error, self.plain_errors)
                    return
                for response in responses:
                    yield response
                if stream.exchange_done:
                    # Envoy ends an ext_proc stream by half-closing it and resetting it at once
                    # (RST_STREAM CANCEL); grpc.aio leaks native memory for each batch that fails
                    # on a cancelled call (grpc/grpc#43360), a few hundred bytes per request.
                    # Finishing the call first, with OK, leaves nothing to cancel.
                    return
        finally:
            stream.release_body()
            if stream.ctx is not None and not stream.handed_off:
                self.director.finish(stream.ctx, error=error)

    async def _observe(self, first: pb.ProcessingRequest, requests: AsyncIterator[pb.ProcessingRequest]) -> None:
        """An observation stream: claim the request by id, then follow its response to the end."""
        observation = _Observation(self.director)
        try:
            if first.WhichOneof("request") == "request_headers":
                request_id = _request_id(_headers(first.request_headers))
                if request_id is not None:
                    observation.ctx = await self.observed.claim_waiting(request_id, OBSERVATION_GRACE_SECONDS)
            if observation.ctx is None:
                return  # nothing to follow: ending the call lets Envoy drop what it would send
            async for request in requests:
                observation.handle(request)
                if observation.done:
                    return  # finished with OK: nothing left for Envoy to reset (grpc/grpc#43360)
        except Exception as exc:  # noqa: BLE001 - an observation must never take the server down
            _FAILURES.exception(type(exc).__name__, "response observation failed")
        finally:
            if observation.ctx is not None:
                # The stream ended before the response did: the client left or Envoy gave up.
                self.director.finish(observation.ctx)
