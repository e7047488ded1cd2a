"""JSON bytes as Go's ``encoding/json`` writes them, for the shapes the Go EPP hashes.

The Go EPP hashes ``json.Marshal(messages)`` for chat prefixes. Go's output is compact
JSON like orjson's, except that it HTML-escapes ``<``, ``>``, ``&`` and escapes U+2028 and
U+2029. Those characters only ever occur inside JSON strings, so replacing them in
orjson's output gives Go's bytes exactly. Map keys are sorted, as Go sorts map keys.
Known difference: floats with integral values (Go ``1``, orjson ``1.0``).
A value nested deeper than orjson can write raises ``BadRequest``.
"""

from __future__ import annotations

from typing import Any

import orjson

from epp.errors import BadRequest
from epp.requests.limits import TOO_DEEP_MESSAGE

__all__ = ["go_json", "sorted_maps"]

_GO_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


def sorted_maps(value: Any) -> Any:
    """``value`` with every mapping's keys sorted, as Go marshals ``map``/``any`` values.

    Iterative, so a client's nesting depth cannot exhaust Python's recursion limit.
    """
    if not isinstance(value, dict | list):
        return value
    root: Any = {} if isinstance(value, dict) else []
    pending: list[tuple[Any, Any]] = [(value, root)]
    while pending:
        source, copy = pending.pop()
        if isinstance(source, dict):
            for key in sorted(source):
                copy[key] = _shell(source[key], pending)
        else:
            copy.extend(_shell(item, pending) for item in source)
    return root


def _shell(value: Any, pending: list[tuple[Any, Any]]) -> Any:
    """A scalar as is; an empty container to fill later, queued with its source."""
    if isinstance(value, dict):
        shell: Any = {}
    elif isinstance(value, list):
        shell = []
    else:
        return value
    pending.append((value, shell))
    return shell


def go_json(value: Any, sort_keys: bool = False) -> bytes:
    """Go's bytes for ``value``; ``BadRequest`` if it nests deeper than orjson can write."""
    try:
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    except orjson.JSONEncodeError as exc:
        # Values parsed by orjson always encode, except past orjson's depth limit: that is
        # the client's doing (a 400), not the picker's (a 500 with a traceback).
        if "recursion" in str(exc).lower():
            raise BadRequest(TOO_DEEP_MESSAGE) from None
        raise
    for raw, escaped in _GO_ESCAPES:
        if raw in data:
            data = data.replace(raw, escaped)
    return data
