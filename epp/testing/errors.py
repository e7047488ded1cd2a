"""Read the picker's own error answers the way a client would, in either body shape."""

from __future__ import annotations

import orjson

__all__ = ["error_message"]


def error_message(body: bytes) -> str:
    """The error text of an immediate response: ``error.message`` of the OpenAI JSON shape
    (the default), or the whole body of the Go EPP's plain text (``--plain-errors``)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode()
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return str(parsed["error"].get("message", ""))
    return body.decode()
