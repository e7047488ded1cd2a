"""A bounded HTTP load generator that records per-request latency and time to first byte.

Closed loop (``concurrency`` workers back to back) or open loop (Poisson arrivals at
``rate``), always bounded by a request count and a deadline. Streaming responses are
read chunk by chunk so TTFT is the arrival of the first body chunk. Run it in its own
process (``python -m benchmarks.loadgen``) so it does not share an event loop with what
it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

__all__ = ["Outcome", "Summary", "percentile", "run_closed_loop", "run_open_loop", "summarize"]


@dataclass(slots=True)
class Outcome:
    status: int
    latency: float
    ttft: float | None
    upstream: str
    output_tokens: int = 0
    cached_tokens: int = 0
    prompt_tokens: int = 0
    tag: str = ""
    sent_at: float = 0.0  # time.monotonic() when the request was sent


@dataclass
class Summary:
    requests: int
    errors: int
    duration: float
    rps: float
    p50: float
    p90: float
    p99: float
    ttft_p50: float | None
    ttft_p90: float | None
    output_tokens_per_s: float
    upstreams: dict[str, int] = field(default_factory=dict)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _usage(body: bytes) -> tuple[int, int, int]:
    """(prompt, completion, cached) tokens from a JSON body or the usage event of an SSE stream."""
    for line in reversed(body.split(b"\n")):
        line = line.strip()
        if line.startswith(b"data: "):
            line = line[6:]
        if b'"usage"' not in line:
            continue
        try:
            usage = json.loads(line).get("usage") or {}
        except ValueError:
            continue
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        return usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), cached or 0
    return 0, 0, 0


async def _one(session: aiohttp.ClientSession, url: str, body: bytes, tag: str) -> Outcome:
    start = time.monotonic()
    ttft = None
    chunks = []
    try:
        async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
            async for chunk in response.content.iter_any():
                if ttft is None:
                    ttft = time.monotonic() - start
                chunks.append(chunk)
            status = response.status
            upstream = response.headers.get("x-upstream-host", "")
    except (TimeoutError, aiohttp.ClientError):
        return Outcome(599, time.monotonic() - start, None, "", tag=tag, sent_at=start)
    prompt, completion, cached = _usage(b"".join(chunks)) if status == 200 else (0, 0, 0)
    return Outcome(status, time.monotonic() - start, ttft, upstream, completion, cached, prompt, tag, start)


async def run_closed_loop(url: str, bodies: Sequence[bytes], concurrency: int, max_requests: int,
                          max_seconds: float) -> tuple[list[Outcome], float]:
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + max_seconds
    counter = iter(range(max_requests))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def worker() -> None:
            for i in counter:
                if time.monotonic() > deadline:
                    return
                outcomes.append(await _one(session, url, bodies[i % len(bodies)], ""))

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return outcomes, time.monotonic() - start


async def run_open_loop(url: str, requests: Sequence[tuple[str, bytes]], rate: float, max_seconds: float,
                        seed: int = 0) -> tuple[list[Outcome], float]:
    """Send ``requests`` (tag, body) in order with Poisson arrivals at ``rate`` per second."""
    rng = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=max_seconds)) as session:
        start = time.monotonic()
        tasks = []
        next_at = start
        for tag, body in requests:
            next_at += rng.expovariate(rate)
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() - start > max_seconds:
                break
            tasks.append(asyncio.create_task(_one(session, url, body, tag)))
        outcomes = list(await asyncio.gather(*tasks))
        return outcomes, time.monotonic() - start


def summarize(outcomes: Sequence[Outcome], duration: float) -> Summary:
    ok = [o for o in outcomes if o.status == 200]
    latencies = [o.latency for o in ok]
    ttfts = [o.ttft for o in ok if o.ttft is not None]
    upstreams: dict[str, int] = {}
    for o in ok:
        upstreams[o.upstream] = upstreams.get(o.upstream, 0) + 1
    return Summary(
        requests=len(outcomes), errors=len(outcomes) - len(ok), duration=duration,
        rps=len(ok) / duration if duration else 0.0,
        p50=percentile(latencies, 50), p90=percentile(latencies, 90), p99=percentile(latencies, 99),
        ttft_p50=percentile(ttfts, 50) if ttfts else None, ttft_p90=percentile(ttfts, 90) if ttfts else None,
        output_tokens_per_s=sum(o.output_tokens for o in ok) / duration if duration else 0.0,
        upstreams=dict(sorted(upstreams.items())),
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    """Closed-loop run from the command line; prints the summary as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--body", required=True, help="JSON request body")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    runner: Callable[..., Any]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    outcomes, duration = runner(run_closed_loop(args.url, [args.body.encode()], args.concurrency, args.requests,
                                                args.seconds))
    print(json.dumps(asdict(summarize(outcomes, duration))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
