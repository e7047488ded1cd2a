"""vLLM-shaped error responses.

vLLM answers every failed OpenAI request with the same JSON body (``ErrorResponse`` in
``vllm/entrypoints/openai/engine/protocol.py``, built by ``create_error_response``)::

    {"error": {"message": "...", "type": "BadRequestError", "param": null, "code": 400}}

Handlers raise ``SimHTTPError``; the server turns it into that body in one place.

    SimHTTPError
    ├── BadRequest        400  bad JSON, missing or wrong fields, prompt too long
    ├── NotFound          404  unknown model or LoRA adapter
    └── InternalError     500  injected failures (--fail-rate, fault mode "error")
"""

from __future__ import annotations

import orjson
from aiohttp import web

__all__ = [
    "BadRequest",
    "InternalError",
    "NotFound",
    "SimHTTPError",
    "error_body",
    "error_response",
]


class SimHTTPError(Exception):
    """An error that becomes a vLLM error body with ``status`` and ``err_type``."""

    status = 500
    err_type = "InternalServerError"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequest(SimHTTPError):
    """The request is malformed or cannot be served (vLLM: 400 BadRequestError)."""

    status = 400
    err_type = "BadRequestError"


class NotFound(SimHTTPError):
    """The requested model or adapter is unknown (vLLM: 404 NotFoundError)."""

    status = 404
    err_type = "NotFoundError"


class InternalError(SimHTTPError):
    """A simulated engine failure (vLLM: 500 InternalServerError)."""

    status = 500
    err_type = "InternalServerError"


def error_body(exc: SimHTTPError) -> bytes:
    """The JSON body vLLM sends for ``exc``."""
    return orjson.dumps(
        {"error": {"message": exc.message, "type": exc.err_type, "param": exc.param, "code": exc.status}}
    )


def error_response(exc: SimHTTPError) -> web.Response:
    """An aiohttp response carrying ``exc`` the way vLLM would."""
    return web.Response(status=exc.status, body=error_body(exc), content_type="application/json")
