"""The admin API's one error shape, for every status it answers with an error.

Every error body is::

    {"code": "NotFound", "message": "...", "details": {...} | null,
     "requestId": "<uuid>", "timestamp": "2026-11-30T08:41:23.123Z", "retryable": false}

``code`` is a stable machine-readable name for the HTTP status (``ERROR_CODES``);
``message`` is for people and never carries a secret (no token, no credential path);
``retryable`` says whether the same request may succeed later unchanged (throttling and
server-side failures: yes; bad input, auth, missing things: no).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

__all__ = ["ERROR_CODES", "REQUEST_ID", "ApiError", "error_body", "error_response", "http_exception_response"]

# Set by the request-id middleware; read wherever an error body is written.
REQUEST_ID = web.RequestKey("epp_request_id", str)

ERROR_CODES: Mapping[int, tuple[str, bool]] = {
    400: ("InvalidRequest", False),
    401: ("Unauthorized", False),
    403: ("Forbidden", False),
    404: ("NotFound", False),
    405: ("MethodNotAllowed", False),
    406: ("NotAcceptable", False),
    413: ("PayloadTooLarge", False),
    429: ("RateLimitExceeded", True),
    500: ("Internal", True),
    503: ("Unavailable", True),
    504: ("Timeout", True),
}
# aiohttp's own exceptions carry headers the client needs (``Allow`` on 405); anything
# else they carry (their text/plain content type, say) is replaced.
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")


class ApiError(Exception):
    """Raised by a handler for an expected failure; the middleware writes the shared shape."""

    def __init__(self, status: int, message: str, details: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = dict(details) if details is not None else None
        self.headers = dict(headers or {})


def _code(status: int) -> tuple[str, bool]:
    known = ERROR_CODES.get(status)
    if known is not None:
        return known
    return ("Internal", True) if status >= 500 else ("InvalidRequest", False)


def _timestamp(wall_clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(wall_clock(), UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_body(status: int, message: str, request_id: str | None, details: Mapping[str, Any] | None = None,
               wall_clock: Callable[[], float] = time.time) -> dict[str, Any]:
    code, retryable = _code(status)
    return {"code": code, "message": message, "details": dict(details) if details is not None else None,
            "requestId": request_id, "timestamp": _timestamp(wall_clock), "retryable": retryable}


def error_response(request: web.Request, status: int, message: str, details: Mapping[str, Any] | None = None,
                   headers: Mapping[str, str] | None = None,
                   wall_clock: Callable[[], float] = time.time) -> web.Response:
    body = error_body(status, message, request.get(REQUEST_ID), details, wall_clock)
    return web.json_response(body, status=status, headers=dict(headers or {}))


def http_exception_response(request: web.Request, exc: web.HTTPException | ApiError,
                            wall_clock: Callable[[], float] = time.time) -> web.Response:
    """The shared shape for an ``ApiError`` or one of aiohttp's (404 and 405 from the router)."""
    if isinstance(exc, ApiError):
        return error_response(request, exc.status, exc.message, exc.details, exc.headers, wall_clock)
    kept = {name: exc.headers[name] for name in _KEPT_HEADERS if name in exc.headers}
    details: dict[str, Any] | None = None
    if exc.status == 405 and "Allow" in kept:
        details = {"method": request.method, "allowed": sorted(m for m in kept["Allow"].split(",") if m)}
    return error_response(request, exc.status, exc.reason, details, kept, wall_clock)
