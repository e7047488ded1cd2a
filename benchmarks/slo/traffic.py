"""The SLO benchmark's traffic: three request classes, seeded Poisson arrivals, per-request objectives.

Classes (shares in ``SloMix``): ``tight`` objectives only the fast replicas meet under load,
``loose`` ones every replica but the slowest, loaded one meets, and ``none`` (no headers,
routed by the default profile in both pickers). Prompts are unique (no shared prefix), so
what decides a request's latency is the replica's speed and its load, not its cache.

``send_open_loop`` sends a plan at its arrival times and measures, client-side, for each
request: the status, TTFT (send to the first body byte) and TPOT ((last byte − first byte)
/ (completion tokens − 1), the tokens from the stream's usage event).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from benchmarks.loadgen import _usage as stream_usage

__all__ = ["MODEL", "Measured", "Objective", "Planned", "SloMix", "plan", "send_open_loop"]

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
FAILED = 599  # connection failure or the client's deadline


@dataclass(frozen=True, slots=True)
class Objective:
    ttft_ms: float | None
    tpot_ms: float | None

    def headers(self) -> dict[str, str]:
        out = {}
        if self.ttft_ms is not None:
            out["x-slo-ttft-ms"] = f"{self.ttft_ms:g}"
        if self.tpot_ms is not None:
            out["x-slo-tpot-ms"] = f"{self.tpot_ms:g}"
        return out

    @property
    def stated(self) -> bool:
        return self.ttft_ms is not None or self.tpot_ms is not None

    def met(self, ttft_ms: float, tpot_ms: float | None) -> bool:
        """Both stated objectives met (a TPOT objective with no measurable TPOT counts as met)."""
        if self.ttft_ms is not None and ttft_ms > self.ttft_ms:
            return False
        return not (self.tpot_ms is not None and tpot_ms is not None and tpot_ms > self.tpot_ms)


@dataclass(frozen=True, slots=True)
class SloMix:
    tight: Objective = Objective(250.0, 12.0)
    loose: Objective = Objective(1000.0, 30.0)
    shares: tuple[float, float, float] = (0.3, 0.3, 0.4)  # tight, loose, none
    prompt_tokens: tuple[int, int] = (100, 1000)
    output_tokens: tuple[int, int] = (16, 64)

    def objective(self, klass: str) -> Objective:
        return {"tight": self.tight, "loose": self.loose}.get(klass, Objective(None, None))


@dataclass(frozen=True, slots=True)
class Planned:
    klass: str  # "tight", "loose" or "none"
    at: float  # seconds after the start of the run
    body: bytes
    objective: Objective


@dataclass(frozen=True, slots=True)
class Measured:
    request: Planned
    status: int
    sent: float  # seconds after the start of the run
    ttft_ms: float | None
    tpot_ms: float | None
    ended: float  # seconds after the start of the run
    upstream: str

    @property
    def met(self) -> bool:
        return self.status == 200 and self.ttft_ms is not None and self.request.objective.met(self.ttft_ms,
                                                                                               self.tpot_ms)


def _prompt(rng: random.Random, tokens: int) -> str:
    # Six characters per word: about one simulator token each (docs/simulator.md).
    return " ".join(f"t{rng.randrange(100_000):05d}" for _ in range(tokens))


def plan(rate: float, seconds: float, mix: SloMix, seed: int) -> list[Planned]:
    """Arrivals over ``seconds`` at ``rate`` per second: the same list for every picker given one seed."""
    rng = random.Random(seed)
    out: list[Planned] = []
    at = rng.expovariate(rate)
    while at < seconds:
        klass = rng.choices(("tight", "loose", "none"), weights=mix.shares)[0]
        body = json.dumps({
            "model": MODEL, "max_tokens": rng.randint(*mix.output_tokens), "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"Request {len(out)}. " + _prompt(rng, rng.randint(
                *mix.prompt_tokens))}],
        }).encode()
        out.append(Planned(klass, at, body, mix.objective(klass)))
        at += rng.expovariate(rate)
    return out


async def _send(session: aiohttp.ClientSession, url: str, request: Planned, start: float) -> Measured:
    sent = time.monotonic()
    first = last = None
    chunks: list[bytes] = []
    status, upstream = FAILED, ""
    headers = {"content-type": "application/json", **request.objective.headers()}
    try:
        async with session.post(url, data=request.body, headers=headers) as response:
            async for chunk in response.content.iter_any():
                last = time.monotonic()
                if first is None:
                    first = last
                chunks.append(chunk)
            status = response.status
            upstream = response.headers.get("x-upstream-host", "")
    except (TimeoutError, aiohttp.ClientError):
        status = FAILED
    ended = time.monotonic()
    ttft = (first - sent) * 1e3 if first is not None else None
    tpot = None
    if status == 200 and first is not None and last is not None:
        completion = stream_usage(b"".join(chunks))[1]
        if completion >= 2:
            tpot = (last - first) * 1e3 / (completion - 1)
    return Measured(request, status, sent - start, ttft, tpot, ended - start, upstream)


async def send_open_loop(url: str, requests: Sequence[Planned], deadline: float) -> list[Measured]:
    """Send each request at its planned time; every request is abandoned ``deadline`` seconds after the start."""
    start = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=deadline)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        tasks = []
        for request in requests:
            delay = start + request.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_send(session, url, request, start)))
        return list(await asyncio.gather(*tasks))
