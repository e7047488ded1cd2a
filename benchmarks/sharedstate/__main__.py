"""What sharing routing state through Redis costs: picker CPU per routed request and store traffic.

Starts one ``redis-server`` on a free loopback port. Two scenarios, interleaved round by
round so the noisy machine affects both alike:

- ``local``: one replica's prefix producer and in-flight producer, no shared state;
- ``shared``: replica A routes, replica B (same process) follows; both replicate through
  Redis (``epp.sharedstate``).

CPU is this process's (``time.process_time``: A's request path + A's publishing + B's
applying + both load loops + the Redis client), reported as a ratio shared/local; the
store's traffic per routed request comes from Redis ``INFO`` deltas. Two pacings: requests
back to back (large batches per ``XADD``) and ~500 requests/s (small batches).

    python -m benchmarks.sharedstate [--requests 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from redis.asyncio import Redis

from epp.datalayer.endpoint import Endpoint, EndpointMetadata
from epp.datalayer.pool import EndpointPool
from epp.devstack.processes import free_port
from epp.framework.plugin import Handle
from epp.framework.requestcontrol import ResponseInfo
from epp.framework.scheduling import CycleState, ProfileRunResult, SchedulingResult
from epp.plugins import default_registry
from epp.requests.types import ApiKind, InferenceRequest
from epp.sharedstate import SharedStateSettings, build_shared_state

ENDPOINTS = [Endpoint(EndpointMetadata(f"10.0.0.{i}:8000", f"10.0.0.{i}", 8000, 8000, MappingProxyType({})))
             for i in range(8)]
_RNG = random.Random(5)
# 16 system prompts of 4 KB: each request is one of them plus its own question (66 blocks).
SYSTEM_PROMPTS = [bytes(_RNG.choice(b"abcdefghij ") for _ in range(4000)) for _ in range(16)]


def make_request(i: int) -> InferenceRequest:
    prompt = SYSTEM_PROMPTS[i % len(SYSTEM_PROMPTS)] + f" user question number {i} ".encode() * 8
    return InferenceRequest(request_id=str(i), api=ApiKind.COMPLETIONS, path="/v1/completions", model="m",
                            target_model="m", body={"model": "m"}, raw_body=b"{}", stream=False, headers={},
                            cache_salt="", prompt=prompt)


def producers() -> tuple[Any, Any]:
    registry = default_registry()
    handle = Handle(pool=EndpointPool(), rng=random.Random(1))
    prefix = registry.create("approx-prefix-cache-producer", "prefix", {"autoTune": False}, handle, "p")
    inflight = registry.create("inflight-load-producer", "inflight", None, handle, "i")
    return prefix, inflight


async def route(prefix: Any, inflight: Any, count: int, pace: float) -> None:
    for i in range(count):
        request, cycle = make_request(i), CycleState()
        await prefix.prepare_data(cycle, request, ENDPOINTS)
        await inflight.prepare_data(cycle, request, ENDPOINTS)
        endpoint = ENDPOINTS[i % len(ENDPOINTS)]
        result = SchedulingResult(profile_results={"d": ProfileRunResult([endpoint])}, primary_profile="d")
        prefix.pre_request(cycle, request, result)
        inflight.pre_request(cycle, request, result)
        inflight.response_complete(request, ResponseInfo(endpoint=endpoint, completed=True))
        if pace:
            await asyncio.sleep(pace)
        elif i % 50 == 0:
            await asyncio.sleep(0)


@dataclass(frozen=True)
class StoreCounters:
    commands: int
    bytes_in: int
    bytes_out: int
    cpu_seconds: float

    def __sub__(self, other: StoreCounters) -> StoreCounters:
        return StoreCounters(self.commands - other.commands, self.bytes_in - other.bytes_in,
                             self.bytes_out - other.bytes_out, self.cpu_seconds - other.cpu_seconds)


async def store_counters(client: Redis) -> StoreCounters:
    stats, cpu = await client.info("stats"), await client.info("cpu")
    return StoreCounters(stats["total_commands_processed"], stats["total_net_input_bytes"],
                         stats["total_net_output_bytes"], cpu["used_cpu_user"] + cpu["used_cpu_sys"])


async def run_local(count: int, pace: float) -> float:
    prefix, inflight = producers()
    started = time.process_time()
    await route(prefix, inflight, count, pace)
    return time.process_time() - started


async def run_shared(url: str, client: Redis, count: int, pace: float, pool: str) -> tuple[float, StoreCounters, int]:
    prefix_a, inflight_a = producers()
    prefix_b, inflight_b = producers()
    settings = SharedStateSettings()
    a = build_shared_state(url, pool, "a", [prefix_a, inflight_a], settings)
    b = build_shared_state(url, pool, "b", [prefix_b, inflight_b], settings)
    tasks = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
    await asyncio.sleep(0.5)  # both connected, load loops running
    before = await store_counters(client)
    started = time.process_time()
    await route(prefix_a, inflight_a, count, pace)
    deadline = time.monotonic() + 30
    while b.prefix.counters.records_applied < count and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    cpu = time.process_time() - started
    traffic = await store_counters(client) - before
    if b.prefix.counters.records_applied != count:
        raise SystemExit(f"follower applied {b.prefix.counters.records_applied} of {count} records "
                         f"(dropped {a.prefix.outbox.dropped})")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await a.aclose()
    await b.aclose()
    return cpu, traffic, a.prefix.counters.batches_sent


async def main(requests: int, rounds: int) -> None:
    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL)
    try:
        await asyncio.sleep(0.5)
        client = Redis(host="127.0.0.1", port=port)
        for label, pace in (("back to back", 0.0), ("paced ~500/s", 0.002)):
            count = requests if not pace else requests // 3
            ratios, local_us, shared_us, traffic, batches = [], [], [], [], []
            for r in range(rounds):
                local = await run_local(count, pace)
                shared, counters, sent = await run_shared(f"redis://127.0.0.1:{port}/0", client, count, pace,
                                                          f"bench-{label[:4]}-{r}")
                local_us.append(local / count * 1e6)
                shared_us.append(shared / count * 1e6)
                ratios.append(shared / local)
                traffic.append(counters)
                batches.append(count / max(1, sent))
            print(f"{label}: {count} requests x {rounds} rounds; picker CPU per request local "
                  f"{statistics.median(local_us):.1f} µs, shared {statistics.median(shared_us):.1f} µs; "
                  f"ratio shared/local median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, "
                  f"max {max(ratios):.2f})")
            # Two of the commands counted are this benchmark's own INFO calls.
            print(f"   store per routed request: {statistics.median((t.commands - 2) / count for t in traffic):.3f} "
                  f"commands, {statistics.median(t.bytes_in / count for t in traffic):.0f} bytes in, "
                  f"{statistics.median(t.bytes_out / count for t in traffic):.0f} bytes out (one follower), "
                  f"redis-server CPU {statistics.median(t.cpu_seconds / count * 1e6 for t in traffic):.1f} µs; "
                  f"records per XADD {statistics.median(batches):.1f}")
        await client.aclose()
    finally:
        server.kill()
        server.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds))
