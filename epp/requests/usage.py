"""Token usage from OpenAI responses, buffered or streamed as server-sent events.

Non-streaming bodies are parsed once at the end. Streams are scanned chunk by chunk: only
``data:`` events that carry a usage object are decoded (vLLM sends ``"usage":null`` in
every chunk and the object in the last one when ``stream_options.include_usage`` is
set), and an event split across chunks is reassembled. A chunk without a usage object
costs one substring search (0.4 µs, against 1.8 µs for a JSON parse of every chunk).
Both ``prompt_tokens_details`` (OpenAI, vLLM) and ``prompt_token_details`` (what the Go
EPP reads) are accepted for cached tokens.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

from epp.framework.requestcontrol import Usage

__all__ = ["UsageScanner", "usage_from_json"]

# Bound on what a non-streaming response buffers for usage parsing; larger bodies pass
# through untouched and go without usage figures.
MAX_BUFFERED_RESPONSE = 1024 * 1024


def _has_usage_object(data: bytes) -> bool:
    """``"usage":`` followed by an object (also inside a Responses ``response.completed`` event)."""
    i = data.find(b'"usage":')
    while i >= 0:
        j = i + 8
        if data[j : j + 1] == b" ":
            j += 1
        if data[j : j + 1] == b"{":
            return True
        i = data.find(b'"usage":', j)
    return False


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def usage_from_json(obj: Any) -> Usage | None:
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if not isinstance(usage, dict) and obj.get("type") == "response.completed":
        response = obj.get("response")
        usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        return None
    details = (usage.get("prompt_tokens_details") or usage.get("prompt_token_details")
               or usage.get("input_tokens_details"))
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    return Usage(prompt_tokens=_int(prompt), completion_tokens=_int(completion), cached_tokens=cached)


class UsageScanner:
    """Feed response body chunks; ``usage`` holds the last usage seen."""

    __slots__ = ("streaming", "usage", "_pending", "_buffer", "_overflow")

    def __init__(self, streaming: bool) -> None:
        self.streaming = streaming
        self.usage: Usage | None = None
        self._pending = b""
        self._buffer: list[bytes] = []
        self._overflow = 0

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if not self.streaming:
            self._overflow += len(chunk)
            if self._overflow <= MAX_BUFFERED_RESPONSE:
                self._buffer.append(chunk)
            return
        if not self._pending and chunk.endswith(b"\n") and not _has_usage_object(chunk):
            return  # the common case: whole events, none with usage
        data = self._pending + chunk if self._pending else chunk
        last_newline = data.rfind(b"\n")
        if last_newline < 0:
            self._pending = data[-65536:]
            return
        self._pending = data[last_newline + 1 :]
        if not _has_usage_object(data):
            return
        for line in data[:last_newline].split(b"\n"):
            if line.startswith(b"data:") and _has_usage_object(line):
                payload = line[5:].strip()
                try:
                    found = usage_from_json(orjson.loads(payload))
                except orjson.JSONDecodeError:
                    continue
                if found is not None:
                    self.usage = found

    def finish(self) -> Usage | None:
        if self.streaming:
            if self._pending:
                self.feed(b"\n")
        elif self._buffer and self._overflow <= MAX_BUFFERED_RESPONSE:
            with contextlib.suppress(orjson.JSONDecodeError):
                self.usage = usage_from_json(orjson.loads(b"".join(self._buffer)))
            self._buffer = []
        return self.usage
