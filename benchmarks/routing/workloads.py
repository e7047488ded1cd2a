"""Request streams for the routing benchmark, generated deterministically from a seed.

Lengths are in simulator tokens (about 4 characters each, see docs/simulator.md).

- ``shared-prefix``: ``groups`` long system prompts (think one per customer or RAG
  template), each request is one group's system prompt plus a short question. The
  working set of all prefixes exceeds one replica's KV cache but fits in all of them,
  the case where routing decides the hit rate.
- ``hot-prefix``: the same, but one group carries ``hot_share`` of the traffic, more
  than one replica can serve: affinity must spill it over instead of queueing.
- ``eviction-heavy``: as shared-prefix with 64 groups of 2k tokens, popularity skewed
  (Zipf 0.8): the working set is 4x one replica's KV cache (and all of the cluster's), so
  replicas evict constantly and where a prefix was sent says little about where it still is.
- ``eviction-saturated``: eviction-heavy on replicas running 2 sequences at a time, so a
  misrouted cold prefill queues the requests behind it (TTFT then measures routing, not
  only one prefill).
- ``no-prefix``: every prompt unique; routing can only balance load.
- ``lora``: short prompts spread over more LoRA adapters than a replica has slots.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

__all__ = ["MODEL", "Workload", "build"]

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
LORA_ADAPTERS = tuple(f"adapter-{i}" for i in range(8))
_WORDS = (
    "time", "person", "year", "way", "day", "thing", "man", "world", "life", "hand", "part", "child", "eye",
    "woman", "place", "work", "week", "case", "point", "government", "company", "number", "group", "problem",
    "fact", "account", "order", "policy", "shipment", "refund", "warranty", "river", "system", "data",
    "model", "answer", "question", "support", "customer", "invoice", "delivery", "contract", "service",
    "region", "market", "report", "budget", "engine", "sensor", "signal", "network", "storage", "compute",
    "cluster", "replica", "gateway", "router", "latency",
)


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    requests: list[tuple[str, bytes]]  # (tag, body) in arrival order
    path: str
    sim_args: list[str]
    description: str


def _text(rng: random.Random, tokens: int) -> str:
    # ~1.25 tokens per word with this vocabulary and the simulator's 6-character pieces.
    return " ".join(rng.choice(_WORDS) for _ in range(int(tokens / 1.25)))


def _chat(system: str, question: str, max_tokens: int, model: str = MODEL) -> bytes:
    return json.dumps({"model": model, "max_tokens": max_tokens, "stream": True,
                       "stream_options": {"include_usage": True},
                       "messages": [{"role": "system", "content": system},
                                    {"role": "user", "content": question}]}).encode()


def shared_prefix(n: int, seed: int, groups: int = 16, prefix_tokens: int = 4000, hot_share: float = 0.0
                  ) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    systems = [f"Customer {g} policy handbook. " + _text(random.Random(seed * 1000 + g), prefix_tokens)
               for g in range(groups)]
    requests = []
    for i in range(n):
        group = 0 if rng.random() < hot_share else rng.randrange(groups)
        question = f"Question {i}: " + _text(rng, 60)
        requests.append((f"group-{group}", _chat(systems[group], question, 32)))
    return requests


def eviction_heavy(n: int, seed: int, groups: int = 64, prefix_tokens: int = 2000, skew: float = 0.8
                   ) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    systems = [f"Customer {g} policy handbook. " + _text(random.Random(seed * 1000 + g), prefix_tokens)
               for g in range(groups)]
    weights = [1.0 / (g + 1) ** skew for g in range(groups)]
    requests = []
    for i in range(n):
        group = rng.choices(range(groups), weights)[0]
        question = f"Question {i}: " + _text(rng, 60)
        requests.append((f"group-{group}", _chat(systems[group], question, 32)))
    return requests


def no_prefix(n: int, seed: int, prompt_tokens: int = 2500) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    return [(f"unique-{i}", _chat(f"Request {i} {rng.random()}. " + _text(rng, prompt_tokens), "Summarise.", 32))
            for i in range(n)]


def lora(n: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        adapter = rng.choice(LORA_ADAPTERS)
        out.append((adapter, _chat(f"Task {i}. " + _text(rng, 200), "Answer briefly.", 32, model=adapter)))
    return out


def build(name: str, rate: float, seconds: float, seed: int = 1) -> Workload:
    n = int(rate * seconds)
    # 2048 blocks x 16 tokens = 32k tokens of KV per replica: 16 prefixes x 4k tokens (64k)
    # do not fit one replica, and 4 of them do fit in one replica each.
    small_cache = ["--num-gpu-blocks", "2048", "--max-model-len", "32768"]
    if name == "shared-prefix":
        return Workload(name, shared_prefix(n, seed), "/v1/chat/completions", small_cache,
                        "16 groups x 4k-token system prompt + 60-token question, 32 output tokens")
    if name == "hot-prefix":
        return Workload(name, shared_prefix(n, seed, hot_share=0.6), "/v1/chat/completions",
                        [*small_cache, "--max-num-seqs", "4"],
                        "as shared-prefix, 60% of requests in one group; 4 sequences per replica")
    if name == "eviction-heavy":
        return Workload(name, eviction_heavy(n, seed), "/v1/chat/completions", small_cache,
                        "64 groups x 2k-token system prompt (Zipf 0.8), 4x one replica's KV cache; 32 output tokens")
    if name == "eviction-saturated":
        return Workload(name, eviction_heavy(n, seed), "/v1/chat/completions", [*small_cache, "--max-num-seqs", "2"],
                        "eviction-heavy with 2 sequences per replica: misrouted cold prefills build queues")
    if name == "no-prefix":
        return Workload(name, no_prefix(n, seed), "/v1/chat/completions", small_cache,
                        "unique 2.5k-token prompts, 32 output tokens")
    if name == "lora":
        modules = [f"{a}=/adapters/{a}" for a in LORA_ADAPTERS]
        return Workload(name, lora(n, seed), "/v1/chat/completions",
                        [*small_cache, "--lora-modules", *modules, "--max-loras", "2", "--lora-load-time", "0.25"],
                        "8 LoRA adapters, 2 slots per replica, 250 ms adapter load, 200-token prompts")
    raise ValueError(f"unknown workload {name!r}")
