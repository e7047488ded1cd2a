"""JSON bytes as Go's ``encoding/json`` writes them, for the shapes the Go EPP hashes.

The Go EPP hashes ``json.Marshal(messages)`` for chat prefixes. Go's output is compact
JSON like orjson's, except that it HTML-escapes ``<``, ``>``, ``&`` and escapes U+2028 and
U+2029. Those characters only ever occur inside JSON strings, so replacing them in
orjson's output gives Go's bytes exactly. Map keys are sorted, as Go sorts map keys.
Known difference: floats with integral values (Go ``1``, orjson ``1.0``).
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["go_json", "sorted_maps"]

_GO_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


def sorted_maps(value: Any) -> Any:
    """``value`` with every mapping's keys sorted, as Go marshals ``map``/``any`` values."""
    if isinstance(value, dict):
        return {k: sorted_maps(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [sorted_maps(v) for v in value]
    return value


def go_json(value: Any, sort_keys: bool = False) -> bytes:
    data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    for raw, escaped in _GO_ESCAPES:
        if raw in data:
            data = data.replace(raw, escaped)
    return data
