"""The request mix of the soak run: valid traffic plus the inputs a careless or hostile client sends.

Every request has a unique ``x-request-id``. The mix is drawn from a seeded ``random.Random``
so two runs with the same seed send the same requests in the same order.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

import orjson

__all__ = ["MODELS", "Kind", "Planned", "plan"]

# The models the simulators serve (``--served-model-name``): label values a real pool has.
MODELS = ("meta-llama/Llama-3.1-8B-Instruct", "soak-model-a", "soak-model-b")
SYSTEM_PROMPTS = tuple(f"You are assistant number {n}. Answer briefly and cite your sources. " * 8 for n in range(24))
WORDS = ("river", "bridge", "cloud", "engine", "forest", "harbour", "lantern", "meadow", "orbit", "pepper")


class Kind(enum.Enum):
    """What a request is, and so which answers are expected for it."""

    VALID = "valid"
    VALID_STREAM = "valid-stream"
    HEADERS_ONLY = "headers-only"
    UNKNOWN_MODEL = "unknown-model"  # a fresh model name per request: a new label value each time
    LONG_MODEL = "long-model"  # 10 KB model name
    MALFORMED = "malformed-json"
    ABORT = "client-abort"  # streaming, the client goes away after the first chunk


# Share of each kind, in percent.
WEIGHTS = {Kind.VALID: 55, Kind.VALID_STREAM: 15, Kind.HEADERS_ONLY: 5, Kind.UNKNOWN_MODEL: 8, Kind.LONG_MODEL: 5,
           Kind.MALFORMED: 5, Kind.ABORT: 7}
EXPECTED = {Kind.VALID: {200}, Kind.VALID_STREAM: {200}, Kind.HEADERS_ONLY: {200}, Kind.UNKNOWN_MODEL: {404},
            Kind.LONG_MODEL: {400}, Kind.MALFORMED: {400}, Kind.ABORT: {200}}


@dataclass(frozen=True, slots=True)
class Planned:
    kind: Kind
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]

    def expected(self, status: int) -> bool:
        return status in EXPECTED[self.kind]


def _chat(model: str, rng: random.Random, stream: bool, max_tokens: int) -> bytes:
    question = " ".join(rng.choice(WORDS) for _ in range(12))
    return orjson.dumps({"model": model, "max_tokens": max_tokens, "stream": stream, "messages": [
        {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}, {"role": "user", "content": question}]})


def plan(index: int, run_id: str, rng: random.Random) -> Planned:
    kind = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
    headers = {"x-request-id": f"soak-{run_id}-{index}", "content-type": "application/json"}
    chat = "/v1/chat/completions"
    match kind:
        case Kind.VALID:
            return Planned(kind, "POST", chat, _chat(rng.choice(MODELS), rng, False, 4), headers)
        case Kind.VALID_STREAM:
            return Planned(kind, "POST", chat, _chat(rng.choice(MODELS), rng, True, 8), headers)
        case Kind.HEADERS_ONLY:
            return Planned(kind, "GET", "/v1/models", None, headers)
        case Kind.UNKNOWN_MODEL:
            return Planned(kind, "POST", chat, _chat(f"no-such-model-{run_id}-{index}", rng, False, 4), headers)
        case Kind.LONG_MODEL:
            return Planned(kind, "POST", chat, _chat("L" * 10_000 + str(index), rng, False, 4), headers)
        case Kind.MALFORMED:
            body = _chat(rng.choice(MODELS), rng, False, 4)
            return Planned(kind, "POST", chat, body[: rng.randrange(1, len(body) - 1)], headers)
        case Kind.ABORT:
            return Planned(kind, "POST", chat, _chat(rng.choice(MODELS), rng, True, 200), headers)
