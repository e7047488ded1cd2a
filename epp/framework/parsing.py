"""The request-parser extension point (config section ``parser: {pluginRef: ...}``).

``parse_request`` is called once per request with the lower-cased request headers and
the complete body. It raises ``BadRequest`` for anything the model server could not
serve (not JSON, no model, no prompt); the message reaches the client in the 400 body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from epp.requests.types import ApiKind

__all__ = ["ParsedBody", "Parser"]


@dataclass(slots=True)
class ParsedBody:
    api: ApiKind
    path: str
    model: str
    body: dict[str, Any]
    stream: bool
    cache_salt: str
    prompt: bytes  # what prefix-cache hashing reads (see openai-parser)


@runtime_checkable
class Parser(Protocol):
    def parse_request(self, headers: Mapping[str, str], body: bytes) -> ParsedBody: ...
