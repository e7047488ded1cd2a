"""Prompt -> token ids, the way a vLLM model server computes them.

Shared by the picker (the precise prefix-cache scorer hashes the prompt's blocks) and the
simulator (which caches and reports blocks of the same ids): both MUST call
``PromptTokenizer.encode_request`` so that their token ids, and therefore their block keys,
agree.

What it reproduces from vLLM's OpenAI server:

* ``completions``: ``body["prompt"]`` is text (encoded with the tokenizer's special tokens,
  e.g. a BOS, as vLLM's ``add_special_tokens=True`` default for completions does) or a list
  of ints (already token ids, returned unchanged). A one-element list holding either form is
  accepted too.
* ``chat_completions``: ``body["messages"]`` is rendered with the model's chat template
  (``add_generation_prompt=True``), then encoded WITHOUT adding special tokens (the
  template writes them itself; vLLM's chat default is ``add_special_tokens=False``).
  Content given as a list of parts is reduced to its text parts joined with ``"\\n"``
  (vLLM's "string" content format); other parts (images, audio) are ignored.

The chat template comes from a ``tokenizer_config.json`` (its ``chat_template``) or a
``chat_template.jinja`` beside the ``tokenizer.json``. Templates are files from elsewhere,
so they are rendered in Jinja's immutable sandbox. Without a template, the documented
fallback rendering is one ``"{role}: {content}\\n"`` line per message and nothing else.

Leaf module: imports only ``tokenizers``, ``jinja2`` and the standard library (the
simulator imports it). Pure and deterministic; no network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

__all__ = ["COMPLETIONS", "CHAT_COMPLETIONS", "PromptTokenizer", "TokenizationError", "fallback_chat_text"]

COMPLETIONS = "completions"
CHAT_COMPLETIONS = "chat_completions"

_SPECIAL_TOKEN_FIELDS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class TokenizationError(ValueError):
    """The request cannot be turned into token ids (malformed body, template error)."""


def _raise_from_template(message: str) -> NoReturn:
    raise TokenizationError(f"chat template raised: {message}")


def _strftime_now(fmt: str) -> str:
    # Templates (Llama 3.x) print today's date; a fixed date keeps the ids deterministic,
    # and the simulator renders the same template through this same function.
    return datetime(2024, 1, 1, tzinfo=UTC).strftime(fmt)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _sandbox() -> ImmutableSandboxedEnvironment:
    # Same environment options as Hugging Face transformers' apply_chat_template, so a
    # template renders the same text here as in the model server.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_from_template
    env.globals["strftime_now"] = _strftime_now
    return env


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _template_from_config(config: Mapping[str, Any]) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, str):
        return template
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        chosen = named.get("default")
        return chosen if isinstance(chosen, str) else None
    return None


def _content_text(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "\n".join(texts)
    raise TokenizationError(f"messages[{index}].content must be a string, a list of parts or null")


def _normalise_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TokenizationError("messages must be a non-empty list")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TokenizationError(f"messages[{i}] must be an object")
        role = message.get("role")
        if not isinstance(role, str):
            raise TokenizationError(f"messages[{i}].role must be a string")
        normalised = dict(message)
        normalised["content"] = _content_text(message.get("content"), i)
        out.append(normalised)
    return out


def fallback_chat_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The rendering used when a model has no chat template: ``"{role}: {content}\\n"`` per message."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in _normalise_messages(messages))


class PromptTokenizer:
    """A Hugging Face tokenizer plus its chat template; see the module docstring for the rules."""

    def __init__(self, tokenizer: Tokenizer, chat_template: str | None = None,
                 special_tokens: Mapping[str, str] | None = None) -> None:
        self._tokenizer = tokenizer
        self._special_tokens = dict(special_tokens or {})
        self.chat_template = chat_template
        self._template: jinja2.Template | None = None
        if chat_template is not None:
            try:
                self._template = _sandbox().from_string(chat_template)
            except jinja2.TemplateError as e:
                raise TokenizationError(f"invalid chat template: {e}") from e

    @classmethod
    def from_file(cls, path: Path) -> PromptTokenizer:
        """Load ``tokenizer.json``; a ``tokenizer_config.json`` / ``chat_template.jinja`` beside it is used."""
        path = Path(path)
        tokenizer = Tokenizer.from_file(str(path))
        config_path = path.with_name("tokenizer_config.json")
        config: Mapping[str, Any] = {}
        if config_path.is_file():
            loaded = json.loads(config_path.read_text(encoding="utf-8"))
            if isinstance(loaded, Mapping):
                config = loaded
        template = _template_from_config(config)
        jinja_path = path.with_name("chat_template.jinja")
        if template is None and jinja_path.is_file():
            template = jinja_path.read_text(encoding="utf-8")
        special = {f: t for f in _SPECIAL_TOKEN_FIELDS if (t := _token_text(config.get(f))) is not None}
        return cls(tokenizer, template, special)

    def render_chat(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The prompt text of a chat request (template with add_generation_prompt=True, or the fallback)."""
        normalised = _normalise_messages(messages)
        if self._template is None:
            return fallback_chat_text(normalised)
        try:
            return self._template.render(messages=normalised, add_generation_prompt=True, tools=None,
                                         **self._special_tokens)
        except TokenizationError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as e:
            raise TokenizationError(f"chat template failed: {e}") from e

    def encode_text(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    @property
    def backend(self) -> Tokenizer:
        """The Hugging Face tokenizer itself (for callers that encode the ``prompt_text`` their own way)."""
        return self._tokenizer

    def encode_request(self, api: str, body: Mapping[str, Any]) -> list[int]:
        """The token ids vLLM computes for this request body; raises ``TokenizationError``."""
        prompt = self.prompt_text(api, body)
        if isinstance(prompt, list):
            return prompt
        text, add_special_tokens = prompt
        return self.encode_text(text, add_special_tokens=add_special_tokens)

    def prompt_text(self, api: str, body: Mapping[str, Any]) -> tuple[str, bool] | list[int]:
        """What ``encode_request`` encodes: (text, add_special_tokens), or the ids a completion gave itself.

        Raises ``TokenizationError``. ``encode_text(*prompt_text(...))`` is ``encode_request``."""
        if api == COMPLETIONS:
            return self._completion_prompt(body.get("prompt"))
        if api == CHAT_COMPLETIONS:
            return self.render_chat(body.get("messages", ())), False
        raise TokenizationError(f"unknown api {api!r}; expected {COMPLETIONS!r} or {CHAT_COMPLETIONS!r}")

    @staticmethod
    def _completion_prompt(prompt: Any) -> tuple[str, bool] | list[int]:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return prompt, True
        if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return list(prompt)
        raise TokenizationError("prompt must be a string or a list of token ids")
