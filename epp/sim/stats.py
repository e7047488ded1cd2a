"""A frozen snapshot of one replica, for tests, benchmarks and ``GET /sim/stats``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["SimStats"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SimStats:
    """Counters since start and gauges at the moment of the snapshot.

    Attributes:
        running: requests in the running batch.
        waiting: requests in the waiting queue (including those waiting for a LoRA load).
        kv_usage: fraction of KV blocks held by requests (``vllm:kv_cache_usage_perc``).
        kv_blocks_used: blocks held by requests.
        kv_blocks_cached: blocks registered in the prefix cache (held or evictable).
        num_gpu_blocks: KV cache size in blocks.
        prefix_queries: prompt tokens looked up in the prefix cache.
        prefix_hits: prompt tokens found there.
        requests_received: inference requests accepted by the engine.
        requests_finished: requests that produced all their tokens.
        requests_aborted: requests whose client went away before the end.
        requests_failed: requests answered with an injected error (fail rate, fault mode).
        prompt_tokens: prompt tokens of requests that reached their first token.
        generation_tokens: tokens generated.
        preemptions: running requests preempted for lack of KV blocks.
        steps: engine steps run.
        resident_loras: adapters in GPU slots.
        registered_loras: adapters known to the server.
        fault: the current fault mode (``ok``, ``hang``, ``error``, ``down``).
    """

    running: int
    waiting: int
    kv_usage: float
    kv_blocks_used: int
    kv_blocks_cached: int
    num_gpu_blocks: int
    prefix_queries: int
    prefix_hits: int
    requests_received: int
    requests_finished: int
    requests_aborted: int
    requests_failed: int
    prompt_tokens: int
    generation_tokens: int
    preemptions: int
    steps: int
    resident_loras: tuple[str, ...]
    registered_loras: tuple[str, ...]
    fault: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        data = asdict(self)
        data["resident_loras"] = list(self.resident_loras)
        data["registered_loras"] = list(self.registered_loras)
        return data
