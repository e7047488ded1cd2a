"""What approximate prefix routing costs per request, and what its index costs in memory.

- hashing an 8k-token prompt (32 KB of text) into chained xxhash64 blocks, with the GIE
  default cap (maxPrefixBlocksToMatch 256 = 4096 tokens) and uncapped (512 blocks);
- matching those hashes against an index holding 4 endpoints x 31,250 blocks;
- the producer's whole per-request work (prepare_data + pre_request);
- index memory per (endpoint, block) entry, measured with tracemalloc.

Figures are medians over batches.

    python -m benchmarks.prefix
"""

from __future__ import annotations

import asyncio
import random
import sys
import tracemalloc

from benchmarks.timing import median_us
from epp.datalayer.endpoint import Endpoint, EndpointMetadata
from epp.datalayer.pool import EndpointPool
from epp.framework.plugin import Handle
from epp.framework.scheduling import CycleState, ProfileRunResult, SchedulingResult
from epp.plugins.prefix.hashing import hash_prompt
from epp.plugins.prefix.index import PrefixIndex
from epp.plugins.prefix.producer import ApproxPrefixCacheProducer
from epp.requests.types import ApiKind, InferenceRequest

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def prompt_of(tokens: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [rng.choice(["policy", "refund", "river", "gateway", "replica", "token", "model", "cache"])
             for _ in range(tokens)]
    return " ".join(words).encode()[: tokens * 4]


def index_memory_per_entry(endpoints: int, blocks: int) -> float:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = PrefixIndex(blocks)
    rng = random.Random(1)
    for e in range(endpoints):
        hashes = [rng.getrandbits(64) for _ in range(blocks)]
        for i in range(0, blocks, 256):
            index.record(f"endpoint-{e}", hashes[i : i + 256])
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / len(index)


def main() -> int:
    prompt = prompt_of(8192, 1)
    capped = median_us(lambda: hash_prompt(prompt, MODEL, "", 16, 256))
    uncapped = median_us(lambda: hash_prompt(prompt, MODEL, "", 16, 10**6))
    print(f"prompt: {len(prompt)} bytes (~8k tokens)")
    print(f"hash, GIE default cap (256 blocks = 4096 tokens): {capped:7.1f} us per request")
    print(f"hash, uncapped (512 blocks):                      {uncapped:7.1f} us per request")

    index = PrefixIndex(31_250)
    rng = random.Random(2)
    for e in range(4):
        for _ in range(31_250 // 256):
            index.record(f"endpoint-{e}", [rng.getrandbits(64) for _ in range(256)])
    shared = hash_prompt(prompt, MODEL, "", 16, 256)
    index.record("endpoint-1", shared)
    index.record("endpoint-2", shared[:128])
    match = median_us(lambda: index.match(shared))
    print(f"match 256 blocks against 4 x 31,250 entries:      {match:7.1f} us per request")

    pool = EndpointPool()
    producer = ApproxPrefixCacheProducer("p", None, Handle(pool=pool))
    endpoints = [Endpoint(EndpointMetadata(f"e{i}", "127.0.0.1", 8000 + i, 8000 + i)) for i in range(4)]
    loop = asyncio.new_event_loop()

    def request_cycle() -> None:
        request = InferenceRequest(request_id="r", api=ApiKind.COMPLETIONS, path="/v1/completions", model=MODEL,
                                   target_model=MODEL, body={}, raw_body=b"", stream=False, headers={},
                                   prompt=prompt)
        cycle = CycleState()
        loop.run_until_complete(producer.prepare_data(cycle, request, endpoints))
        producer.pre_request(cycle, request, SchedulingResult({"default": ProfileRunResult([endpoints[0]])},
                                                              "default"))

    whole = median_us(request_cycle, n=100)
    print(f"producer prepare_data + pre_request, 8k tokens:   {whole:7.1f} us per request")
    per_entry = index_memory_per_entry(4, 31_250)
    print(f"index memory: {per_entry:.0f} bytes per (endpoint, block) entry; "
          f"{per_entry * 31_250 * 4 / 2**20:.1f} MiB for 4 endpoints x 31,250 blocks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
