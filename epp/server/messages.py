"""Building ext_proc ``ProcessingResponse`` messages (protobufs from ``xds-protos``, upb).

The GIE endpoint-picker protocol, reduced to message shapes:

- destination: request-headers response with header ``x-gateway-destination-endpoint``
  (overwrite) and ``clear_route_cache``, plus dynamic metadata
  ``envoy.lb/x-gateway-destination-endpoint`` with the same value;
- bodies in FULL_DUPLEX_STREAMED mode go back as ``streamed_response`` chunks of at most
  62,000 bytes (the Go EPP's limit), ``end_of_stream`` on the last;
- errors are an ``ImmediateResponse`` with the HTTP status and a plain-text body.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2 as core
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from epp.errors import PickerError

__all__ = [
    "BODY_CHUNK_LIMIT",
    "DESTINATION_HEADER",
    "DESTINATION_NAMESPACE",
    "buffered_request_body_response",
    "continue_request_body",
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


def _header(key: str, value: str) -> core.HeaderValueOption:
    return core.HeaderValueOption(header=core.HeaderValue(key=key, raw_value=value.encode()), append_action=_OVERWRITE)


def _mutation(set_headers: Iterable[tuple[str, str]], remove: Iterable[str]) -> pb.HeaderMutation:
    return pb.HeaderMutation(set_headers=[_header(k, v) for k, v in set_headers], remove_headers=list(remove))


def _destination_metadata(destination: str) -> struct_pb2.Struct:
    metadata = struct_pb2.Struct()
    metadata.fields[DESTINATION_NAMESPACE].struct_value.fields[DESTINATION_HEADER].string_value = destination
    return metadata


def request_headers_response(destination: str, set_headers: list[tuple[str, str]], remove: Iterable[str]
                             ) -> pb.ProcessingResponse:
    common = pb.CommonResponse(clear_route_cache=True,
                               header_mutation=_mutation([(DESTINATION_HEADER, destination), *set_headers], remove))
    return pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=common),
                                 dynamic_metadata=_destination_metadata(destination))


def buffered_request_body_response(destination: str, set_headers: list[tuple[str, str]], remove: Iterable[str],
                                   body: bytes | None) -> pb.ProcessingResponse:
    """BUFFERED mode: headers are still held by Envoy, so the mutation rides on the body response."""
    common = pb.CommonResponse(clear_route_cache=True,
                               header_mutation=_mutation([(DESTINATION_HEADER, destination), *set_headers], remove))
    if body is not None:
        common.body_mutation.body = body
    return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common),
                                 dynamic_metadata=_destination_metadata(destination))


def streamed_body(body: bytes, end_of_stream: bool, request: bool) -> list[pb.ProcessingResponse]:
    """FULL_DUPLEX_STREAMED body, split into chunks Envoy accepts."""
    field = "request_body" if request else "response_body"
    if len(body) <= BODY_CHUNK_LIMIT:
        chunks = [body]
    else:
        chunks = [body[i : i + BODY_CHUNK_LIMIT] for i in range(0, len(body), BODY_CHUNK_LIMIT)]
    last = len(chunks) - 1
    return [
        pb.ProcessingResponse(**{field: pb.BodyResponse(response=pb.CommonResponse(body_mutation=pb.BodyMutation(
            streamed_response=pb.StreamedBodyResponse(body=chunk, end_of_stream=end_of_stream and i == last))))})
        for i, chunk in enumerate(chunks)
    ]


def immediate_response(error: PickerError) -> pb.ProcessingResponse:
    headers = pb.HeaderMutation(set_headers=[_header("content-type", "text/plain; charset=utf-8")])
    return pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(
        status=http_status_pb2.HttpStatus(code=error.status_code), headers=headers, body=error.body.encode()))


# Constant "continue unchanged" answers, shared by every stream (never mutated).
_CONTINUE_REQUEST_HEADERS = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
_CONTINUE_RESPONSE_HEADERS = pb.ProcessingResponse(response_headers=pb.HeadersResponse())
_CONTINUE_REQUEST_BODY = pb.ProcessingResponse(request_body=pb.BodyResponse())
_CONTINUE_RESPONSE_BODY = pb.ProcessingResponse(response_body=pb.BodyResponse())


def continue_request_headers() -> pb.ProcessingResponse:
    return _CONTINUE_REQUEST_HEADERS


def continue_response_headers() -> pb.ProcessingResponse:
    return _CONTINUE_RESPONSE_HEADERS


def continue_request_body() -> pb.ProcessingResponse:
    return _CONTINUE_REQUEST_BODY


def continue_response_body(body: bytes | None = None) -> pb.ProcessingResponse:
    if body is None:
        return _CONTINUE_RESPONSE_BODY
    return pb.ProcessingResponse(response_body=pb.BodyResponse(response=pb.CommonResponse(
        body_mutation=pb.BodyMutation(body=body))))


def trailers_response(request: bool) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(**{"request_trailers" if request else "response_trailers": pb.TrailersResponse()})
