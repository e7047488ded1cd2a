"""Picker errors map to HTTP statuses and Go EPP body text in one place."""

from __future__ import annotations

import pytest

from epp.errors import (
    BadRequest,
    ConfigError,
    Forbidden,
    InternalError,
    NotFound,
    PayloadTooLarge,
    PickerError,
    ResourceExhausted,
    ServiceUnavailable,
    Unauthorized,
)


@pytest.mark.parametrize(
    ("cls", "status", "code"),
    [
        pytest.param(BadRequest, 400, "BadRequest", id="bad request is 400"),
        pytest.param(Unauthorized, 401, "Unauthorized", id="unauthorized is 401"),
        pytest.param(Forbidden, 403, "Forbidden", id="forbidden is 403"),
        pytest.param(NotFound, 404, "NotFound", id="not found is 404"),
        pytest.param(PayloadTooLarge, 413, "PayloadTooLarge", id="payload too large is 413"),
        pytest.param(ResourceExhausted, 429, "ResourceExhausted", id="resource exhausted is 429"),
        pytest.param(InternalError, 500, "Internal", id="internal is 500 with the Go code name"),
        pytest.param(ServiceUnavailable, 503, "ServiceUnavailable", id="service unavailable is 503"),
        pytest.param(PickerError, 500, "Internal", id="the base error is internal"),
    ],
)
def test_status_codes_and_body_format(cls: type[PickerError], status: int, code: str) -> None:
    err = cls("something went wrong")
    assert (err.status_code, err.code) == (status, code)
    assert err.body == f"inference error: {code} - something went wrong"
    assert err.message == str(err) == "something went wrong"
    assert isinstance(err, PickerError)


def test_the_go_epp_messages_render_as_go_does() -> None:
    assert ResourceExhausted("failed to find target endpoint").body == \
        "inference error: ResourceExhausted - failed to find target endpoint"
    assert ServiceUnavailable("failed to find endpoint candidates for serving the request").body == \
        "inference error: ServiceUnavailable - failed to find endpoint candidates for serving the request"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(None, "plugins[2].parameters.threshold: must be > 0", id="without a value"),
        pytest.param(-1, "plugins[2].parameters.threshold: must be > 0 (got -1)", id="with a value shown by repr"),
        pytest.param("x", "plugins[2].parameters.threshold: must be > 0 (got 'x')", id="a string value is quoted"),
    ],
)
def test_config_errors_name_the_field(value: object, text: str) -> None:
    err = ConfigError("plugins[2].parameters.threshold", "must be > 0", value)
    assert str(err) == text
    assert (err.field, err.reason, err.value) == ("plugins[2].parameters.threshold", "must be > 0", value)
    assert isinstance(err, ValueError) and not isinstance(err, PickerError)
