"""The fixed chat template that turns OpenAI ``messages`` into prompt text.

It is the Llama-3 template without its date preamble, so every message is framed the same
way and a shared system prompt produces the same leading tokens (and KV blocks) in every
request::

    <|begin_of_text|>
    <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>      (per message)
    <|start_header_id|>assistant<|end_header_id|>\\n\\n                     (generation prompt)

``content`` may be a string or a list of parts; text parts are concatenated and other parts
(images, audio) are ignored. Tool calls are rendered as their JSON so that they count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from epp.sim.errors import BadRequest
from epp.sim.tokenizer import BOS_TOKEN, EOT_TOKEN

__all__ = ["render_chat", "message_text"]

_HEADER = "<|start_header_id|>{role}<|end_header_id|>\n\n"


def message_text(message: dict[str, Any], index: int) -> str:
    """The text content of one message; raises ``BadRequest`` naming the message."""
    content = message.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                raise BadRequest(f"messages[{index}].content parts must be objects", param="messages")
            if part.get("type", "text") == "text":
                value = part.get("text", "")
                if not isinstance(value, str):
                    raise BadRequest(f"messages[{index}].content text must be a string", param="messages")
                parts.append(value)
        text = "".join(parts)
    else:
        raise BadRequest(f"messages[{index}].content must be a string or a list", param="messages")
    tool_calls = message.get("tool_calls")
    if tool_calls:
        text += orjson.dumps(tool_calls).decode()
    return text


def render_chat(messages: Sequence[Any], *, add_generation_prompt: bool = True) -> str:
    """Render ``messages`` through the template; raises ``BadRequest`` on malformed input."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", param="messages")
    out = [BOS_TOKEN]
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{index}] must be an object", param="messages")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise BadRequest(f"messages[{index}].role is required", param="messages")
        out.append(_HEADER.format(role=role))
        out.append(message_text(message, index))
        out.append(EOT_TOKEN)
    if add_generation_prompt:
        out.append(_HEADER.format(role="assistant"))
    return "".join(out)
