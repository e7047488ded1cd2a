"""The request streams every contestant receives, as sessions of one or more turns.

Three single-turn streams come from the routing benchmark (``benchmarks/routing/workloads.py``):
shared prefix, unique prompts and the LoRA mix. Multi-turn chat is built here: a few system
prompts shared by many conversations; each turn resends the whole history (system prompt,
every question and every answer the client received) and is sent only after the previous
answer arrived, so the router decides where the conversation's growing prefix lives.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from benchmarks.routing import workloads as routing
from benchmarks.routing.workloads import _text

__all__ = ["WORKLOADS", "Session", "Workload", "build", "next_turn"]

WORKLOADS = ("shared-prefix", "multi-turn", "unique", "lora")
_ROUTING_NAMES = {"shared-prefix": "shared-prefix", "unique": "no-prefix", "lora": "lora"}


@dataclass(frozen=True, slots=True)
class Session:
    tag: str
    first: bytes  # the first request body
    followups: tuple[str, ...] = ()  # later user messages, each sent with the whole history

    @property
    def turns(self) -> int:
        return 1 + len(self.followups)


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    description: str
    path: str
    sim_args: list[str]
    sessions: list[Session]

    @property
    def turns_per_session(self) -> float:
        return sum(s.turns for s in self.sessions) / len(self.sessions) if self.sessions else 1.0


def next_turn(body: bytes, answer: str, question: str) -> bytes:
    """The previous request with the answer received and the next question appended."""
    doc = json.loads(body)
    doc["messages"] = [*doc["messages"], {"role": "assistant", "content": answer},
                       {"role": "user", "content": question}]
    return json.dumps(doc).encode()


def multi_turn(conversations: int, seed: int, systems: int = 4, system_tokens: int = 1500, turns: int = 5,
               question_tokens: int = 60, max_tokens: int = 32) -> list[Session]:
    rng = random.Random(seed)
    prompts = [f"Assistant persona {s}. " + _text(random.Random(seed * 7919 + s), system_tokens)
               for s in range(systems)]
    sessions = []
    for c in range(conversations):
        system = rng.randrange(systems)
        first = json.dumps({"model": routing.MODEL, "max_tokens": max_tokens, "stream": True,
                            "stream_options": {"include_usage": True},
                            "messages": [{"role": "system", "content": prompts[system]},
                                         {"role": "user", "content": f"Conversation {c}: " + _text(rng, 100)}]})
        followups = tuple(f"Turn {t}: " + _text(rng, question_tokens) for t in range(1, turns))
        sessions.append(Session(f"system-{system}", first.encode(), followups))
    return sessions


def build(name: str, rate: float, seconds: float, seed: int = 1) -> Workload:
    """Enough sessions for ``rate`` requests per second over ``seconds`` (the driver stops at the deadline)."""
    if name in _ROUTING_NAMES:
        base = routing.build(_ROUTING_NAMES[name], rate, seconds, seed)
        return Workload(name, base.description, base.path, base.sim_args,
                        [Session(tag, body) for tag, body in base.requests])
    if name == "multi-turn":
        turns = 5
        sessions = multi_turn(max(1, int(rate * seconds / turns) + 1), seed, turns=turns)
        return Workload(name, f"4 shared 1.5k-token system prompts, {turns} turns per conversation resending the "
                              "history, next turn after the answer, 32 output tokens",
                        "/v1/chat/completions", ["--num-gpu-blocks", "2048", "--max-model-len", "32768"], sessions)
    raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
