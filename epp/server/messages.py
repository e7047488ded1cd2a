"""Building ext_proc ``ProcessingResponse`` messages (protobufs from ``xds-protos``, upb).

The GIE endpoint-picker protocol, reduced to message shapes:

- destination: request-headers response with header ``x-gateway-destination-endpoint``
  (overwrite) and ``clear_route_cache``, plus dynamic metadata
  ``envoy.lb/x-gateway-destination-endpoint``. With several endpoints (a picker's
  ``maxNumOfEndpoints`` > 1) the metadata holds the comma list, primary first, for gateways
  that fall back along it, and the header holds only the primary: Envoy's ORIGINAL_DST
  cluster reads the header as one address and answers 503 to a list (the Go EPP puts the
  list in both);
- bodies in FULL_DUPLEX_STREAMED mode go back as ``streamed_response`` chunks of at most
  62,000 bytes (the Go EPP's limit), ``end_of_stream`` on the last;
- errors are an ``ImmediateResponse`` with the HTTP status and a plain-text body;
- with the fast Envoy config the destination also carries a ``mode_override`` that turns
  the response off on the routing stream (``RESPONSE_OBSERVED``): Envoy then reports the
  response on its observe-only stream and never waits for the picker on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from envoy.config.core.v3 import base_pb2 as core
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as modes
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.errors import PickerError

__all__ = [
    "BODY_CHUNK_LIMIT",
    "DESTINATION_HEADER",
    "DESTINATION_NAMESPACE",
    "RESPONSE_OBSERVED",
    "buffered_request_body_response",
    "continue_request_headers",
    "continue_response_body",
    "continue_response_headers",
    "immediate_response",
    "request_headers_response",
    "streamed_body",
    "trailers_response",
]

DESTINATION_HEADER = "x-gateway-destination-endpoint"
DESTINATION_NAMESPACE = "envoy.lb"
BODY_CHUNK_LIMIT = 62_000
_OVERWRITE = core.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_Mode = modes.ProcessingMode
# The request is complete when the picker answers, so only what follows matters: nothing of
# the response goes to the routing stream.
RESPONSE_OBSERVED = _Mode(request_header_mode=_Mode.SEND, request_body_mode=_Mode.NONE,
                          request_trailer_mode=_Mode.SKIP, response_header_mode=_Mode.SKIP,
                          response_body_mode=_Mode.NONE, response_trailer_mode=_Mode.SKIP)


# Messages are built by setting fields along attribute paths: with upb this measured about
# 4x faster than nesting keyword constructors (0.6 µs against 2.3 µs for a body chunk).


def _fill_mutation(mutation: pb.HeaderMutation, set_headers: Iterable[tuple[str, str]], remove: Iterable[str]) -> None:
    for key, value in set_headers:
        option = mutation.set_headers.add()
        option.header.key = key
        option.header.raw_value = value.encode()
        option.append_action = _OVERWRITE
    mutation.remove_headers.extend(remove)


def _fill_destination(response: pb.ProcessingResponse, common: pb.CommonResponse, destinations: Sequence[str],
                      set_headers: list[tuple[str, str]], remove: Iterable[str]) -> None:
    common.clear_route_cache = True
    _fill_mutation(common.header_mutation, [(DESTINATION_HEADER, destinations[0]), *set_headers], remove)
    fields = response.dynamic_metadata.fields[DESTINATION_NAMESPACE].struct_value.fields
    fields[DESTINATION_HEADER].string_value = ",".join(destinations)


def request_headers_response(destinations: Sequence[str], set_headers: list[tuple[str, str]],
                             remove: Iterable[str], mode_override: modes.ProcessingMode | None = None
                             ) -> pb.ProcessingResponse:
    response = pb.ProcessingResponse()
    _fill_destination(response, response.request_headers.response, destinations, set_headers, remove)
    if mode_override is not None:
        response.mode_override.CopyFrom(mode_override)
    return response


def buffered_request_body_response(destinations: Sequence[str], set_headers: list[tuple[str, str]],
                                   remove: Iterable[str], body: bytes | None) -> pb.ProcessingResponse:
    """BUFFERED mode: headers are still held by Envoy, so the mutation rides on the body response."""
    response = pb.ProcessingResponse()
    common = response.request_body.response
    _fill_destination(response, common, destinations, set_headers, remove)
    if body is not None:
        common.body_mutation.body = body
    return response


def _streamed_chunk(chunk: bytes, end_of_stream: bool, request: bool) -> pb.ProcessingResponse:
    response = pb.ProcessingResponse()
    body = response.request_body if request else response.response_body
    streamed = body.response.body_mutation.streamed_response
    streamed.body = chunk
    streamed.end_of_stream = end_of_stream
    return response


def streamed_body(body: bytes, end_of_stream: bool, request: bool) -> list[pb.ProcessingResponse]:
    """FULL_DUPLEX_STREAMED body, split into chunks Envoy accepts."""
    if len(body) <= BODY_CHUNK_LIMIT:
        return [_streamed_chunk(body, end_of_stream, request)]
    starts = range(0, len(body), BODY_CHUNK_LIMIT)
    last = starts[-1]
    return [_streamed_chunk(body[i : i + BODY_CHUNK_LIMIT], end_of_stream and i == last, request) for i in starts]


def immediate_response(error: PickerError, plain: bool = False) -> pb.ProcessingResponse:
    """The picker's own answer: OpenAI's JSON error object by default, the Go EPP's exact
    ``text/plain`` body with ``plain`` (``--plain-errors``)."""
    response = pb.ProcessingResponse()
    immediate = response.immediate_response
    immediate.status.code = error.status_code
    if plain:
        _fill_mutation(immediate.headers, [("content-type", "text/plain; charset=utf-8")], ())
        immediate.body = error.body.encode()
    else:
        _fill_mutation(immediate.headers, [("content-type", "application/json")], ())
        immediate.body = error.openai_body()
    return response


# Constant "continue unchanged" answers, shared by every stream (never mutated).
_CONTINUE_REQUEST_HEADERS = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
_CONTINUE_RESPONSE_HEADERS = pb.ProcessingResponse(response_headers=pb.HeadersResponse())
_CONTINUE_RESPONSE_BODY = pb.ProcessingResponse(response_body=pb.BodyResponse())


def continue_request_headers() -> pb.ProcessingResponse:
    return _CONTINUE_REQUEST_HEADERS


def continue_response_headers(set_headers: Sequence[tuple[str, str]] = ()) -> pb.ProcessingResponse:
    if not set_headers:
        return _CONTINUE_RESPONSE_HEADERS
    response = pb.ProcessingResponse()
    _fill_mutation(response.response_headers.response.header_mutation, set_headers, ())
    return response


def continue_response_body(body: bytes | None = None) -> pb.ProcessingResponse:
    """BUFFERED response: pass on, or replace the body (and its ``content-length``, which
    Envoy requires to match a replaced buffered body)."""
    if body is None:
        return _CONTINUE_RESPONSE_BODY
    response = pb.ProcessingResponse()
    common = response.response_body.response
    common.body_mutation.body = body
    _fill_mutation(common.header_mutation, [("content-length", str(len(body)))], ())
    return response


def trailers_response(request: bool) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(**{"request_trailers" if request else "response_trailers": pb.TrailersResponse()})
