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
``body``), so the status mapping lives in exactly one place: the class attribute below.
The body text follows the Go EPP (``inference error: <Code> - <message>``) so log
parsers and tests written for it keep working.
"""

from __future__ import annotations

import reprlib
from typing import Any, ClassVar

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

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def body(self) -> str:
        return f"inference error: {self.code} - {self.message}"


class BadRequest(PickerError):
    status_code = 400
    code = "BadRequest"


class Unauthorized(PickerError):
    status_code = 401
    code = "Unauthorized"


class Forbidden(PickerError):
    status_code = 403
    code = "Forbidden"


class NotFound(PickerError):
    status_code = 404
    code = "NotFound"


class ResourceExhausted(PickerError):
    status_code = 429
    code = "ResourceExhausted"


class InternalError(PickerError):
    status_code = 500
    code = "Internal"


class ServiceUnavailable(PickerError):
    status_code = 503
    code = "ServiceUnavailable"


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
