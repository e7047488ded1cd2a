"""Parse and validate OpenAI completion and chat bodies the way vLLM does.

The result, ``ParsedRequest``, holds everything the engine and the response writers need:
the prompt's token ids, the output length, streaming options and the LoRA adapter. Errors
are raised as ``BadRequest`` / ``NotFound`` with vLLM's messages, so a client sees the same
status codes as from a real server:

* 400 for a body that is not a JSON object, a missing ``prompt`` / ``messages``, wrong types,
  a prompt of ``max_model_len`` tokens or more, or ``max_tokens`` that does not fit.
* 404 for a ``model`` that is neither a served name nor a loaded adapter.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from epp.sim.chat_template import render_chat
from epp.sim.errors import BadRequest
from epp.sim.tokenizer import Tokenizer

if TYPE_CHECKING:
    from epp.tokenization import PromptTokenizer

__all__ = ["ParsedRequest", "RequestKind", "load_json", "parse_request"]

# Llama-3's vocabulary: 128000 regular and 256 special tokens.
_FULL_VOCAB = 128256

# Resolves a requested model name to a LoRA adapter name (None: the base model);
# raises NotFound for unknown names.
ModelResolver = Callable[[str | None], str | None]


class RequestKind(enum.Enum):
    """Which OpenAI endpoint a request came from; decides response shapes."""

    COMPLETION = "completion"
    CHAT = "chat"


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A validated inference request, ready for the engine."""

    kind: RequestKind
    model: str  # the name the client asked for, echoed in responses
    lora: str | None
    prompt_ids: list[int]
    max_tokens: int
    max_tokens_explicit: bool  # finish_reason is "length" if set, else "stop"
    stream: bool
    include_usage: bool
    seed: int | None
    cache_salt: str | None
    body: dict[str, Any]  # the original body, for render endpoints


def load_json(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object body; anything else is a 400 as in vLLM."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"JSON decode error: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")
    return body


def _real_prompt_ids(body: dict[str, Any], kind: RequestKind, real: PromptTokenizer) -> list[int]:
    """Token ids from ``--tokenizer``, through the function the picker uses too."""
    from epp.tokenization import CHAT_COMPLETIONS, COMPLETIONS, TokenizationError

    field = "messages" if kind is RequestKind.CHAT else "prompt"
    if field not in body:
        raise BadRequest(f"Field required: {field}", param=field)
    try:
        return real.encode_request(CHAT_COMPLETIONS if kind is RequestKind.CHAT else COMPLETIONS, body)
    except TokenizationError as exc:
        raise BadRequest(str(exc), param=field) from exc


def _prompt_ids(body: dict[str, Any], kind: RequestKind, tokenizer: Tokenizer,
                real: PromptTokenizer | None = None) -> list[int]:
    if real is not None:
        return _real_prompt_ids(body, kind, real)
    if kind is RequestKind.CHAT:
        if "messages" not in body:
            raise BadRequest("Field required: messages", param="messages")
        add_gen = body.get("add_generation_prompt", True)
        return tokenizer.encode(render_chat(body["messages"], add_generation_prompt=bool(add_gen)))
    if "prompt" not in body:
        raise BadRequest("Field required: prompt", param="prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return tokenizer.encode(prompt, add_bos=body.get("add_special_tokens", True) is not False)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        bad = next((t for t in prompt if not 0 <= t < _FULL_VOCAB), None)
        if bad is not None:
            raise BadRequest(f"Token id {bad} is out of vocabulary", param="prompt")
        return list(prompt)
    if isinstance(prompt, list) and len(prompt) > 1:
        raise BadRequest("The simulator serves one prompt per request (batched prompts are not supported)")
    raise BadRequest("prompt must be a string, a list of token ids, or a list of one of these",
                     param="prompt")


def _int_field(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer", param=name)
    if value < minimum:
        raise BadRequest(f"{name} must be at least {minimum}, got {value}.", param=name)
    return value


def _max_tokens(body: dict[str, Any], kind: RequestKind, prompt_len: int, max_model_len: int,
                default: int) -> tuple[int, bool]:
    name = "max_tokens"
    requested = None
    if kind is RequestKind.CHAT:
        requested = _int_field(body, "max_completion_tokens", 1)
        name = "max_completion_tokens" if requested is not None else name
    if requested is None:
        requested = _int_field(body, "max_tokens", 1)
    room = max_model_len - prompt_len
    if requested is None:
        return min(default, room), False
    if requested > room:
        raise BadRequest(
            f"'max_tokens' or 'max_completion_tokens' is too large: {requested}. This model's maximum "
            f"context length is {max_model_len} tokens and your request has {prompt_len} input tokens "
            f"({requested} > {max_model_len} - {prompt_len}).",
            param=name,
        )
    return requested, True


def parse_request(raw: bytes, kind: RequestKind, *, tokenizer: Tokenizer, resolve: ModelResolver,
                  max_model_len: int, default_max_tokens: int, default_model: str,
                  prompt_tokenizer: PromptTokenizer | None = None) -> ParsedRequest:
    """Validate an OpenAI body and tokenize its prompt (with ``prompt_tokenizer`` when given).

    Raises:
        BadRequest: malformed body or a prompt that does not fit (400).
        NotFound: unknown model or adapter (404).
    """
    body = load_json(raw)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("model must be a string", param="model")
    lora = resolve(model)
    n = _int_field(body, "n", 1)
    if n is not None and n > 1:
        raise BadRequest("The simulator supports n=1 only", param="n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool | None):
        raise BadRequest("stream must be a boolean", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("stream_options must be an object", param="stream_options")
    seed = _int_field(body, "seed", -(2**63))
    salt = body.get("cache_salt")
    if salt is not None and not isinstance(salt, str):
        raise BadRequest("cache_salt must be a string", param="cache_salt")

    prompt_ids = _prompt_ids(body, kind, tokenizer, prompt_tokenizer)
    if len(prompt_ids) >= max_model_len:
        raise BadRequest(
            f"This model's maximum context length is {max_model_len} tokens. However, your request has "
            f"{len(prompt_ids)} input tokens. Please reduce the length of the input messages.",
        )
    max_tokens, explicit = _max_tokens(body, kind, len(prompt_ids), max_model_len, default_max_tokens)
    return ParsedRequest(
        kind=kind,
        model=model if model else default_model,
        lora=lora,
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        max_tokens_explicit=explicit,
        stream=bool(stream),
        include_usage=bool(options.get("include_usage", False)),
        seed=seed,
        cache_salt=salt,
        body=body,
    )
