"""Model-name rewrite that changes only the model name, in the request and the response.

``replace_model`` splices a new top-level ``"model"`` value into the raw request bytes.
Re-serialising the parsed body instead (what the Go EPP does) changes what the client
sent: integers of 2^64 and more become floats, ``-0`` becomes ``0``, ``1E2`` becomes
``100.0``, duplicate keys collapse, escapes and whitespace change.

``ModelNameRestorer`` gives the client back the name it asked for in the response, also
when ``"model":"<target>"`` is split across chunks.
"""

from __future__ import annotations

import json
import re

import orjson

from epp.errors import BadRequest

__all__ = ["ModelNameRestorer", "replace_model"]

_WS = rb"[ \t\n\r]*"
_SKIP_WS = re.compile(_WS)
_COLON = re.compile(_WS + rb":" + _WS)
_OBJECT_START = re.compile(_WS + rb"\{")
# Up to the next quote or bracket: all that matters inside a nested value.
_TO_STRING_OR_BRACKET = re.compile(rb'[^"\[\]{}]*')
_SCALAR = re.compile(rb"[^,}\] \t\n\r]+")
_BACKSLASH = 0x5C


def _malformed(what: str) -> ValueError:
    return ValueError(f"replace_model needs a JSON object that parsed: {what}")


def _encode(name: str) -> bytes:
    try:
        return orjson.dumps(name)
    except orjson.JSONEncodeError:  # a lone surrogate: not a name any model server serves
        raise BadRequest("model name is not valid Unicode") from None


def _is_model_key(quoted: bytes) -> bool:
    if quoted == b'"model"':
        return True
    # "mo\u0064el" is the same key to every JSON reader; only escaped spellings need decoding.
    return b"\\" in quoted and orjson.loads(quoted) == "model"


def _string_end(raw: bytes, start: int) -> int:
    """The offset just past the string whose opening quote is at ``start``.

    memchr (bytes.find) does the walking; Python only looks at quotes preceded by a
    backslash, to tell an escaped quote (odd run of backslashes) from the closing one.
    """
    close = raw.find(b'"', start + 1)
    while close != -1 and raw[close - 1] == _BACKSLASH:
        run_start = close - 1
        while raw[run_start - 1] == _BACKSLASH:
            run_start -= 1
        if (close - run_start) % 2 == 0:
            break
        close = raw.find(b'"', close + 1)
    if close == -1:
        raise _malformed("unterminated string")
    return close + 1


def _nested_end(raw: bytes, start: int) -> int:
    """The offset just past the array or object that opens at ``start``."""
    depth = 0
    pos = start
    size = len(raw)
    while True:
        pos = _TO_STRING_OR_BRACKET.match(raw, pos).end()  # type: ignore[union-attr] # may match nothing
        if pos >= size:
            raise _malformed("unbalanced brackets")
        char = raw[pos]
        if char == 0x22:  # a quote
            pos = _string_end(raw, pos)
            continue
        pos += 1
        depth += 1 if char in b"[{" else -1
        if depth == 0:
            return pos


def _value_end(raw: bytes, start: int) -> int:
    first = raw[start : start + 1]
    if first == b'"':
        return _string_end(raw, start)
    if first in (b"[", b"{"):
        return _nested_end(raw, start)
    match = _SCALAR.match(raw, start)
    if match is None:
        raise _malformed("a member without a value")
    return match.end()


def _model_value_spans(raw: bytes, start: int) -> list[tuple[int, int]]:
    """Spans of the values of every "model" member of the object whose members start at ``start``."""
    spans: list[tuple[int, int]] = []
    pos = start
    while True:
        pos = _SKIP_WS.match(raw, pos).end()  # type: ignore[union-attr] # matches the empty string at worst
        first = raw[pos : pos + 1]
        if first == b"}":
            return spans
        if first == b",":
            pos += 1
            continue
        if first != b'"':
            raise _malformed("expected a key")
        key_end = _string_end(raw, pos)
        colon = _COLON.match(raw, key_end)
        if colon is None:
            raise _malformed("a key without a colon")
        value_end = _value_end(raw, colon.end())
        if _is_model_key(raw[pos:key_end]):
            spans.append((colon.end(), value_end))
        pos = value_end


def replace_model(raw: bytes, target: str) -> bytes:
    """``raw`` with the value of every top-level "model" member set to ``target``.

    Every other byte is kept: whitespace, key order, number spellings, escapes, duplicate
    keys, nested "model" keys. Every top-level "model" member is replaced because readers
    differ on which duplicate wins (orjson keeps the last, others the first). A body
    without one gets ``"model"`` as its first member. ``raw`` must be a JSON object that
    parsed (the parser ran); malformed input raises ``ValueError``.
    """
    opening = _OBJECT_START.match(raw)
    if opening is None:
        raise ValueError("replace_model needs a JSON object")
    encoded = _encode(target)
    spans = _model_value_spans(raw, opening.end())
    if not spans:
        rest = raw[opening.end() :]
        separator = b"" if rest.lstrip(b" \t\n\r").startswith(b"}") else b","
        return raw[: opening.end()] + b'"model":' + encoded + separator + rest
    pieces: list[bytes] = []
    done = 0
    for value_start, value_end in spans:
        pieces += (raw[done:value_start], encoded)
        done = value_end
    pieces.append(raw[done:])
    return b"".join(pieces)


class ModelNameRestorer:
    """Rewrites ``"model":"<target>"`` back to ``"model":"<incoming>"`` in a response stream.

    Feed every body chunk in order. Bytes that could be the start of a needle completed by
    the next chunk are held back (never more than the longest needle less one byte) and
    sent with the next chunk, or at end of stream. A chunk with no needle and nothing held
    is returned as it came.
    """

    def __init__(self, target: str, incoming: str) -> None:
        targets = {_encode(target), json.dumps(target).encode()}  # raw UTF-8, and \u-escaped as Python writes it
        replacement = _encode(incoming)
        self._replacements: dict[bytes, bytes] = {}
        for separator in (b'"model":', b'"model": '):
            for spelled in targets:
                self._replacements[separator + spelled] = separator + replacement
        self._pattern = re.compile(b"|".join(re.escape(needle) for needle in self._replacements))
        self._max_hold = max(map(len, self._replacements)) - 1
        self._held = b""

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        data = self._held + chunk if self._held else chunk
        pieces: list[bytes] = []
        done = 0
        for match in self._pattern.finditer(data):
            pieces += (data[done : match.start()], self._replacements[match[0]])
            done = match.end()
        hold = 0 if end_of_stream else self._partial_needle_length(data, done)
        self._held = data[len(data) - hold :] if hold else b""
        if not pieces and not hold:
            return data
        pieces.append(data[done : len(data) - hold])
        return b"".join(pieces)

    def _partial_needle_length(self, data: bytes, unmatched_from: int) -> int:
        """Length of the longest tail of ``data[unmatched_from:]`` that a needle starts with."""
        lowest = max(unmatched_from, len(data) - self._max_hold)
        # Every needle starts with a quote, so only tails starting at a quote can qualify.
        quote = data.find(b'"', lowest)
        while quote != -1:
            tail = data[quote:]
            if any(needle.startswith(tail) for needle in self._replacements):
                return len(tail)
            quote = data.find(b'"', quote + 1)
        return 0
