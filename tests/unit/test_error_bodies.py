"""The picker's own error answers: OpenAI's JSON error object by default, Go's plain text on request."""

from __future__ import annotations

import orjson
import pytest

from epp.errors import (
    BadRequest,
    Forbidden,
    InternalError,
    NotFound,
    PayloadTooLarge,
    PickerError,
    ResourceExhausted,
    ServiceUnavailable,
    Unauthorized,
)
from epp.plugins.parsers.openai import OpenAIParser
from epp.server.messages import immediate_response
from epp.testing.errors import error_message


def _headers(error: PickerError, plain: bool) -> dict[str, str]:
    immediate = immediate_response(error, plain=plain).immediate_response
    return {h.header.key: h.header.raw_value.decode() or h.header.value for h in immediate.headers.set_headers}


@pytest.mark.parametrize(
    ("error", "openai_type"),
    [
        pytest.param(BadRequest("bad"), "BadRequestError", id="400"),
        pytest.param(Unauthorized("who"), "AuthenticationError", id="401"),
        pytest.param(Forbidden("no"), "PermissionDeniedError", id="403"),
        pytest.param(NotFound("gone"), "NotFoundError", id="404"),
        pytest.param(PayloadTooLarge("big"), "RequestTooLargeError", id="413"),
        pytest.param(ResourceExhausted("full"), "RateLimitError", id="429"),
        pytest.param(InternalError("oops"), "InternalServerError", id="500"),
        pytest.param(ServiceUnavailable("none"), "ServiceUnavailableError", id="503"),
    ],
)
def test_the_default_answer_is_an_openai_error_object_carrying_the_go_text(error: PickerError,
                                                                           openai_type: str) -> None:
    immediate = immediate_response(error).immediate_response
    assert immediate.status.code == error.status_code
    assert _headers(error, plain=False)["content-type"] == "application/json"
    assert orjson.loads(immediate.body) == {"error": {
        "message": f"inference error: {error.code} - {error.message}", "type": openai_type, "param": None,
        "code": error.status_code}}
    assert error_message(immediate.body) == error.body


def test_plain_errors_keep_the_go_epp_body_byte_for_byte() -> None:
    error = ResourceExhausted("failed to find target endpoint")
    immediate = immediate_response(error, plain=True).immediate_response
    assert immediate.body == b"inference error: ResourceExhausted - failed to find target endpoint"
    assert _headers(error, plain=True)["content-type"] == "text/plain; charset=utf-8"
    assert error_message(immediate.body) == error.body


def test_a_request_without_model_names_the_field_and_says_why_there_is_no_default() -> None:
    with pytest.raises(BadRequest) as caught:
        OpenAIParser("p", None, None).parse_request({":path": "/v1/completions"}, b'{"prompt": "hi"}')  # type: ignore[arg-type]
    body = orjson.loads(caught.value.openai_body())["error"]
    assert body["param"] == "model"
    assert body["message"].startswith("inference error: BadRequest - model not found in request body")
    assert "no default model" in body["message"]


def test_a_message_with_quotes_and_unicode_stays_valid_json() -> None:
    error = BadRequest('model name "x\u2028y" \\ is odd')
    assert orjson.loads(error.openai_body())["error"]["message"].endswith('model name "x\u2028y" \\ is odd')
