"""The typed request every part of the picker reads: parsed once, never re-parsed."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ApiKind", "InferenceRequest"]


class ApiKind(enum.StrEnum):
    """The OpenAI API a request targets, chosen from the request path."""

    COMPLETIONS = "completions"
    CHAT_COMPLETIONS = "chat_completions"
    RESPONSES = "responses"
    CONVERSATIONS = "conversations"
    EMBEDDINGS = "embeddings"


@dataclass(slots=True, kw_only=True)
class InferenceRequest:
    """One inference request as the director and plugins see it.

    Attributes:
        request_id: ``x-request-id`` (generated when the client sent none).
        api: which OpenAI API, from the path.
        path: the ``:path`` header, without the query string.
        model: the model name the client asked for.
        target_model: the model name sent to the model server (after rewrite).
        body: the parsed JSON object, read-only. Like ``raw_body`` and ``prompt`` it is
            emptied once the request is routed (``release_payload``).
        raw_body: the body bytes as received.
        stream: ``"stream": true`` in the body.
        headers: request headers, lower-case names, pseudo-headers included.
        fairness_id: ``x-gateway-inference-fairness-id`` (``default-flow`` when absent).
        objective: ``x-gateway-inference-objective`` or ``None``.
        priority: priority from the objective (0 when none).
        cache_salt: the body's ``cache_salt`` (``""`` when absent); seeds prefix hashes.
        prompt: what the model reads, as bytes, in the form the Go EPP hashes for prefix
            matching (plain text for completions, JSON for structured inputs).
        received_at: ``time.monotonic()`` when the request headers arrived.
        slo_ttft_ms, slo_tpot_ms: latency objectives from ``x-slo-ttft-ms`` and
            ``x-slo-tpot-ms`` (positive milliseconds), ``None`` when not given.
        workload_id, criticality: the workload context (``x-workload-id``,
            ``x-workload-criticality`` 1-5, 3 when absent or out of range).
    """

    request_id: str
    api: ApiKind
    path: str
    model: str
    target_model: str
    body: dict[str, Any]
    raw_body: bytes
    stream: bool
    headers: Mapping[str, str]
    fairness_id: str = "default-flow"
    objective: str | None = None
    priority: int = 0
    cache_salt: str = ""
    prompt: bytes = b""
    received_at: float = 0.0
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    workload_id: str = "default"
    criticality: int = 3
    # Per-request scratch space for request-lifecycle plugins (keyed by plugin name),
    # e.g. the prefix hashes computed in PrepareData and recorded again in PreRequest.
    plugin_state: dict[str, Any] = field(default_factory=dict)
    # Body size kept once the payload is released (``release_payload``).
    _released_size: int = -1

    @property
    def size_bytes(self) -> int:
        return len(self.raw_body) if self._released_size < 0 else self._released_size

    def release_payload(self) -> None:
        """Drop the body, its parsed form and the prompt once the request is routed.

        A streamed response can last minutes; holding a 64 MiB body (three times over:
        bytes, parsed dict, prompt) for that long is what let concurrent streams pin
        memory. Response hooks see ``size_bytes`` and ``plugin_state``; what a plugin
        needs from the body later it must keep itself in ``pre_request``.
        """
        self._released_size = len(self.raw_body) if self._released_size < 0 else self._released_size
        self.raw_body = b""
        self.body = {}
        self.prompt = b""
