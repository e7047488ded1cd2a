"""``openai-parser``: parse OpenAI request bodies once into a ``ParsedBody``.

The API is chosen from the path (``:path``, else ``x-original-path``, else
``x-forwarded-path``, else ``/v1/completions``) by suffix, in this order:
``/conversations``, ``/responses``, ``/chat/completions``, ``/completions``,
``/embeddings``; any other path is treated as completions, as in the Go EPP. The query
string is ignored.

400 errors use the Go EPP's messages. ``prompt`` holds the bytes the prefix-cache
producer hashes, built the way the Go EPP builds them: completions use the plain prompt
text (a list of strings joined by spaces; token-id prompts give no bytes), chat uses
Go-style JSON of the messages keeping only ``role`` and ``content``, responses JSON of
instructions/tools/input, conversations JSON of the items, embeddings JSON of the input.

Hostile input is refused with a 400 before it is kept or hashed: a body nested deeper than
``MAX_JSON_DEPTH`` levels, a model name that is too long or has control characters
(``epp/requests/limits.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from epp.errors import BadRequest
from epp.framework.parsing import ParsedBody
from epp.framework.plugin import BasePlugin
from epp.requests.gojson import go_json, sorted_maps
from epp.requests.limits import TOO_DEEP_MESSAGE, check_body_depth, check_model_name
from epp.requests.types import ApiKind

__all__ = ["MISSING_MODEL_MESSAGE", "OpenAIParser", "api_for_path", "request_path"]

# Starts with the Go EPP's text, so log searches written for it still match.
MISSING_MODEL_MESSAGE = ("model not found in request body: the gateway routes by model name and has no default "
                         "model; set \"model\" to one of the served models")

_SUFFIXES = (
    ("/conversations", ApiKind.CONVERSATIONS),
    ("/responses", ApiKind.RESPONSES),
    ("/chat/completions", ApiKind.CHAT_COMPLETIONS),
    ("/completions", ApiKind.COMPLETIONS),
    ("/embeddings", ApiKind.EMBEDDINGS),
)
_PATH_HEADERS = (":path", "x-original-path", "x-forwarded-path")


def request_path(headers: Mapping[str, str]) -> str:
    for key in _PATH_HEADERS:
        value = headers.get(key)
        if value:
            return value.split("?", 1)[0]
    return "/v1/completions"


def api_for_path(path: str) -> ApiKind:
    path = path.rstrip("/")
    for suffix, api in _SUFFIXES:
        if path.endswith(suffix):
            return api
    return ApiKind.COMPLETIONS


def _object_field(block: dict[str, Any], key: str) -> dict[str, Any]:
    """``block[key]`` when it is an object, else an empty one (Go's zero-valued struct)."""
    value = block.get(key)
    return value if isinstance(value, dict) else {}


def _content(value: Any) -> Any:
    """A chat message's content the way the Go EPP's ``Content`` type marshals it."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):
        blocks = []
        for block in value:
            if not isinstance(block, dict):
                raise BadRequest("invalid chat completions request: must have valid messages field", param="messages")
            image, audio, video = (_object_field(block, key) for key in ("image_url", "input_audio", "video_url"))
            out: dict[str, Any] = {"type": block.get("type", "")}
            if block.get("text"):
                out["text"] = block["text"]
            out["image_url"] = {"url": image["url"]} if image.get("url") else {}
            out["input_audio"] = {k: audio[k] for k in ("data", "format") if audio.get(k)}
            out["video_url"] = {"url": video["url"]} if video.get("url") else {}
            blocks.append(out)
        return blocks
    raise BadRequest("invalid chat completions request: must have valid messages field", param="messages")


def _chat_prompt(messages: Any) -> bytes:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("invalid chat completions request: must have valid messages field", param="messages")
    shaped = []
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("invalid chat completions request: must have valid messages field", param="messages")
        entry: dict[str, Any] = {}
        if message.get("role"):
            entry["role"] = message["role"]
        entry["content"] = _content(message.get("content"))
        shaped.append(entry)
    return go_json(shaped)


def _completions_prompt(prompt: Any) -> bytes:
    if isinstance(prompt, str) and prompt:
        return prompt.encode()
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return " ".join(prompt).encode()
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt) or all(
            isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompt
        ):
            return b""  # token ids: routable, but nothing to hash as text
    raise BadRequest("invalid completions request: must have prompt field", param="prompt")


def _prompt(api: ApiKind, body: dict[str, Any]) -> bytes:
    match api:
        case ApiKind.COMPLETIONS:
            return _completions_prompt(body.get("prompt"))
        case ApiKind.CHAT_COMPLETIONS:
            return _chat_prompt(body.get("messages"))
        case ApiKind.RESPONSES:
            if body.get("input") is None:
                raise BadRequest("invalid responses request: must have input field", param="input")
            # Go marshals [{"instructions":..},{"tools":..},{"input":..}]. Writing each value on
            # its own gives the same bytes without two wrapper levels, so every body within
            # the depth limit can be hashed.
            keys = [key for key in ("instructions", "tools") if body.get(key) is not None] + ["input"]
            parts = (b'{"' + key.encode() + b'":' + go_json(body[key], sort_keys=True) + b"}" for key in keys)
            return b"[" + b",".join(parts) + b"]"
        case ApiKind.CONVERSATIONS:
            items = body.get("items")
            if not isinstance(items, list) or not items:
                raise BadRequest("invalid conversations request: must have items field", param="items")
            # Go's ConversationItem struct: fields in declaration order, empty ones omitted;
            # the free-form content is a Go map, so its keys are sorted.
            shaped = []
            for item in items:
                entry: dict[str, Any] = {}
                if isinstance(item, dict):
                    for key in ("type", "role"):
                        if item.get(key):
                            entry[key] = item[key]
                    if item.get("content") is not None:
                        entry["content"] = sorted_maps(item["content"])
                shaped.append(entry)
            return go_json(shaped)
        case ApiKind.EMBEDDINGS:
            if body.get("input") in (None, "", []):
                raise BadRequest("invalid embeddings request: must have input field", param="input")
            return go_json(body["input"], sort_keys=True)


class OpenAIParser(BasePlugin):
    """Parses OpenAI completions, chat, responses, conversations and embeddings bodies."""

    TYPE = "openai-parser"

    def parse_request(self, headers: Mapping[str, str], body: bytes) -> ParsedBody:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if exc.msg == "depth limit exceeded":  # orjson's own limit, 1024 levels
                raise BadRequest(TOO_DEEP_MESSAGE) from None
            raise BadRequest(f"error unmarshaling request body: {exc}") from None
        if not isinstance(parsed, dict):
            raise BadRequest("error unmarshaling request body: expected a JSON object")
        check_body_depth(body, parsed)
        model = parsed.get("model")
        if not isinstance(model, str) or not model:
            # vLLM itself falls back to its served model; a gateway routes by model, so it
            # cannot guess one (the Go EPP's rule). The text says so for the client.
            raise BadRequest(MISSING_MODEL_MESSAGE, param="model")
        check_model_name(model, "request body")
        path = request_path(headers)
        api = api_for_path(path)
        salt = parsed.get("cache_salt")
        if salt is not None and not isinstance(salt, str):
            raise BadRequest("cache_salt must be a string", param="cache_salt")
        return ParsedBody(
            api=api, path=path, model=model, body=parsed, stream=parsed.get("stream") is True,
            cache_salt=salt or "", prompt=_prompt(api, parsed),
        )
