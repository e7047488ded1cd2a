"""Bounds on what a client can put into a request, checked before anything keeps it.

A model name becomes a Prometheus label value, a log field, a decision-trace entry and a
map key, so its size must be bounded before any of those see it. A request body's nesting
must be bounded because the picker re-serialises parts of it (the prompt bytes it hashes)
and orjson cannot write a value nested deeper than 254 levels.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from epp.errors import BadRequest

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_MODEL_NAME_LENGTH",
    "TOO_DEEP_MESSAGE",
    "check_body_depth",
    "check_model_name",
]

# Hugging Face ids (owner/name) stay far below 128 characters and Kubernetes object names
# are at most 253 (an InferenceObjective's modelName is free text, but in practice one of
# those), so 256 admits every real name while keeping a label value around 1 KiB at most.
MAX_MODEL_NAME_LENGTH = 256

# The deepest value orjson.dumps can write (it refuses a 255th level); the top-level object
# is level 1. Real requests nest a few levels (a JSON schema in `tools` perhaps 20).
MAX_JSON_DEPTH = 254

TOO_DEEP_MESSAGE = f"request body nested too deeply (limit {MAX_JSON_DEPTH} levels)"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_model_name(name: str, source: str) -> str:
    """``name`` unchanged, or a ``BadRequest`` naming ``source`` (e.g. "request body").

    Control characters are refused because they forge log lines and break label parsing.
    """
    if len(name) > MAX_MODEL_NAME_LENGTH:
        raise BadRequest(f"model name in {source} is longer than {MAX_MODEL_NAME_LENGTH} characters")
    if _CONTROL.search(name):
        raise BadRequest(f"model name in {source} contains a control character")
    return name


def check_body_depth(raw: bytes, parsed: Any) -> None:
    """Refuse a body nested deeper than ``MAX_JSON_DEPTH`` with a ``BadRequest``.

    ``parsed`` is ``orjson.loads(raw)``. orjson.dumps fails exactly past the limit and costs
    about a tenth of the parse; a body with fewer opening brackets than the limit (counting
    those inside strings too) cannot be that deep, which skips the check for most bodies.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return
    try:
        orjson.dumps(parsed)
    except orjson.JSONEncodeError:
        raise BadRequest(TOO_DEEP_MESSAGE) from None
