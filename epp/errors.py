"""Errors the picker can answer a request with, and configuration errors.

Hierarchy::

    PickerError                 a request cannot be served; becomes an ImmediateResponse
    ├── BadRequest              400: body is not JSON, no model, no prompt, unsupported path
    ├── Unauthorized            401
    ├── Forbidden               403
    ├── NotFound                404
    ├── PayloadTooLarge         413: request body over --max-request-body-bytes
    ├── ResourceExhausted       429: shed by admission, or no endpoint passed the filters
    ├── InternalError           500: a plugin failed, no endpoint for a headers-only request
    └── ServiceUnavailable      503: no candidate endpoint (empty pool, subset hint excludes all)

    ConfigError                 the EndpointPickerConfig or a CLI flag is invalid; names the field

Only the ext_proc server turns a ``PickerError`` into a response (``status_code`` and
``body``), so the status mapping lives in exactly one place: the class attributes below.

Two body shapes: ``body`` is the Go EPP's text (``inference error: <Code> - <message>``),
which log parsers and tests written for it expect; ``openai_body()`` wraps that same text
in the error object vLLM and every OpenAI client speak, so an SDK shows the reason instead
of a generic "unexpected response"::

    {"error": {"message": "inference error: BadRequest - ...", "type": "BadRequestError",
               "param": null, "code": 400}}

``type`` is the name OpenAI's SDKs give the status (and vLLM uses for 400/404/500).
"""

from __future__ import annotations

import reprlib
from typing import Any, ClassVar

import orjson

__all__ = [
    "MAX_SHOWN",
    "BadRequest",
    "ConfigError",
    "Forbidden",
    "InternalError",
    "NotFound",
    "PayloadTooLarge",
    "PickerError",
    "ResourceExhausted",
    "ServiceUnavailable",
    "Unauthorized",
    "bounded_repr",
    "clip",
]


class PickerError(Exception):
    """A request-level failure with the HTTP status Envoy should answer with."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "Internal"
    openai_type: ClassVar[str] = "InternalServerError"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The request field at fault, when there is one (OpenAI's ``param``).
        self.param = param

    @property
    def body(self) -> str:
        return f"inference error: {self.code} - {self.message}"

    def openai_body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.body, "type": self.openai_type, "param": self.param,
                                       "code": self.status_code}})


class BadRequest(PickerError):
    status_code = 400
    code = "BadRequest"
    openai_type = "BadRequestError"


class Unauthorized(PickerError):
    status_code = 401
    code = "Unauthorized"
    openai_type = "AuthenticationError"


class Forbidden(PickerError):
    status_code = 403
    code = "Forbidden"
    openai_type = "PermissionDeniedError"


class NotFound(PickerError):
    status_code = 404
    code = "NotFound"
    openai_type = "NotFoundError"


class ResourceExhausted(PickerError):
    status_code = 429
    code = "ResourceExhausted"
    openai_type = "RateLimitError"


class InternalError(PickerError):
    status_code = 500
    code = "Internal"
    openai_type = "InternalServerError"


class ServiceUnavailable(PickerError):
    status_code = 503
    code = "ServiceUnavailable"
    openai_type = "ServiceUnavailableError"


# Longest value shown in an error message.
MAX_SHOWN = 100
_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = MAX_SHOWN
_REPR.maxlong = 40
for _attr in ("maxdict", "maxlist", "maxtuple", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
    setattr(_REPR, _attr, 6)


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked with ``...`` when cut."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def bounded_repr(value: Any) -> str:
    """A value as shown in an error: at most ``MAX_SHOWN`` characters, never a walk of a whole
    graph (a YAML alias bomb's repr would expand it; a client's 64 MiB string would be logged)."""
    return clip(_REPR.repr(value), MAX_SHOWN)


class ConfigError(ValueError):
    """An invalid configuration value, reported with the path of the offending field.

    Args:
        field: dotted path into the config, e.g. ``plugins[2].parameters.threshold``.
        value: the offending value (shown with repr), or ``None`` when a field is missing.
        reason: what is wrong and, where it helps, what is allowed.
    """

    def __init__(self, field: str, reason: str, value: Any = None) -> None:
        self.field = field
        self.reason = reason
        self.value = value
        super().__init__(f"{field}: {reason}{'' if value is None else f' (got {bounded_repr(value)})'}")


class PayloadTooLarge(PickerError):
    status_code = 413
    code = "PayloadTooLarge"
    openai_type = "RequestTooLargeError"
