"""The picker's own Python work per request, in process: no gRPC, no Envoy, no sockets.

Builds the picker as ``epp serve`` does (default profile, four endpoints that are never
contacted), then runs one request's ext_proc messages through the stream state machine
(``epp.server.extproc``) and the director: request headers, body, response headers, the
response body. Prints the median µs per request over several batches; with
``--profile`` also the top functions by own time (cProfile, which slows everything down
in proportion, so read the shares, not the times).

    python -m benchmarks.overhead.inprocess [--requests 2000] [--batches 7] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import pstats
import statistics
import sys
import time

from benchmarks.overhead.transport import envoy_messages
from epp.server.app import PickerServer, ServeOptions
from epp.server.extproc import BodyBudget, _Stream

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


async def one_request(stream: _Stream, script: list) -> int:  # type: ignore[type-arg]
    answers = 0
    for message, _ in script:
        responses = stream.handle(message)
        if stream.pending:
            responses = await stream.decide()
        answers += len(responses)
    return answers


async def run(requests: int, batches: int, profile: bool, gc_threshold: int | None = None) -> list[float]:
    server = PickerServer(ServeOptions(endpoints="10.0.0.1:8000,10.0.0.2:8000,10.0.0.3:8000,10.0.0.4:8000"))
    server.build()
    director = server.director
    assert director is not None
    budget = BodyBudget(1 << 30)
    prompts = [json.dumps({"model": MODEL, "prompt": f"Request {i}: benchmark the gateway overhead, please.",
                           "max_tokens": 4}).encode() for i in range(64)]
    scripts = [envoy_messages(p) for p in prompts]
    if gc_threshold is not None:
        # What a server can do once built: move everything alive to a generation the collector
        # never scans again, and collect the young generation less often.
        gc.collect()
        gc.freeze()
        gc.set_threshold(gc_threshold, *gc.get_threshold()[1:])
    per_request: list[float] = []
    profiler = cProfile.Profile() if profile else None
    for _ in range(batches):
        if profiler:
            profiler.enable()
        start = time.perf_counter()
        for i in range(requests):
            stream = _Stream(director, 64 << 20, budget)
            await one_request(stream, scripts[i % len(scripts)])
            stream.release_body()
            if stream.ctx is not None:
                director.finish(stream.ctx)
        per_request.append((time.perf_counter() - start) / requests * 1e6)
        if profiler:
            profiler.disable()
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
    return per_request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--gc-threshold", type=int, help="gc.freeze() after start-up and this gen-0 threshold")
    args = parser.parse_args(argv)
    per_request = asyncio.run(run(args.requests, args.batches, args.profile, args.gc_threshold))
    print(f"{statistics.median(per_request):.1f} us per request (median of {args.batches} batches; "
          + ", ".join(f"{v:.1f}" for v in per_request) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
