"""Response bodies and SSE chunks in the shapes vLLM's OpenAI server produces.

Streaming (``stream: true``) sends ``data: {json}\\n\\n`` events: for chat a first delta with
``role`` (sent with the first token, as vLLM does after prefill), then one event per
``stream_interval`` tokens, the last carrying ``finish_reason``; then, if
``stream_options.include_usage`` is set, an event with empty ``choices`` and ``usage``; then
``data: [DONE]``. ``usage.prompt_tokens_details.cached_tokens`` reports the prefix-cache hit
(vLLM only fills it with ``--enable-prompt-tokens-details``).
"""

from __future__ import annotations

from typing import Any

import orjson

from epp.sim.openai_request import RequestKind
from epp.sim.request import SimRequest

__all__ = ["DONE", "StreamChunks", "completion_body", "usage"]

DONE = b"data: [DONE]\n\n"


def usage(req: SimRequest) -> dict[str, Any]:
    prompt, output = req.num_prompt, req.num_output
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + output,
        "completion_tokens": output,
        "prompt_tokens_details": {"cached_tokens": req.cached_tokens},
    }


def _finish_reason(req: SimRequest) -> str:
    return req.stop_reason


def completion_body(kind: RequestKind, req: SimRequest, model: str, created: int) -> bytes:
    """The non-streaming response of a finished request."""
    text = "".join(req.output_text)
    if kind is RequestKind.CHAT:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None, "annotations": None,
                        "audio": None, "function_call": None, "tool_calls": [], "reasoning_content": None},
            "logprobs": None,
            "finish_reason": _finish_reason(req),
            "stop_reason": None,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": _finish_reason(req),
                  "stop_reason": None, "prompt_logprobs": None}
        obj = "text_completion"
    return orjson.dumps({
        "id": req.request_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": usage(req),
        "prompt_logprobs": None,
        "kv_transfer_params": None,
    })


class StreamChunks:
    """Pre-formats the constant parts of one request's SSE events.

    Each event is ``head + json(text) + tail``, so a chunk costs one small ``orjson.dumps``.
    """

    __slots__ = ("_kind", "_head", "_req", "_model", "_created", "_role_sent")

    def __init__(self, kind: RequestKind, req: SimRequest, model: str, created: int) -> None:
        self._kind = kind
        self._req = req
        self._model = model
        self._created = created
        self._role_sent = False
        obj = "chat.completion.chunk" if kind is RequestKind.CHAT else "text_completion"
        self._head = orjson.dumps({"id": req.request_id, "object": obj, "created": created,
                                   "model": model})[:-1]

    def text(self, text: str, finish_reason: str | None) -> bytes:
        """One event carrying ``text``; chat streams get their role delta before the first one."""
        out = b""
        if self._kind is RequestKind.CHAT:
            if not self._role_sent:
                self._role_sent = True
                out = self._event([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None, "finish_reason": None}])
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "logprobs": None,
                                      "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        if finish_reason is not None:
            choice["stop_reason"] = None
        return out + self._event([choice])

    def usage(self) -> bytes:
        """The final usage event (``stream_options.include_usage``)."""
        return b"data: " + self._head + b',"choices":[],"usage":' + orjson.dumps(usage(self._req)) + b"}\n\n"

    def _event(self, choices: list[dict[str, Any]]) -> bytes:
        return b"data: " + self._head + b',"choices":' + orjson.dumps(choices) + b"}\n\n"
