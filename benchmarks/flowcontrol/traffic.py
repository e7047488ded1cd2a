"""The overload traffic: three workloads, two priorities, Poisson arrivals, headers per request.

Each planned request names its workload (``x-workload-id`` and, as its fairness id,
``x-gateway-inference-fairness-id``) and its InferenceObjective (``interactive``:
priority 100, or ``batch``: priority -1). ``send_open_loop`` records, per request, the
HTTP status, the time to the first body byte and when the answer ended, relative to the
start of the run. A request the client has waited ``patience`` seconds for is abandoned
(status 599): the client disconnects, as a real one would.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import aiohttp
import orjson

__all__ = ["GAVE_UP", "MODEL", "Answer", "Planned", "TrafficMix", "plan", "send_open_loop"]

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
GAVE_UP = 599  # no answer within the client's patience, or the connection failed
_WORDS = ("queue", "band", "flow", "gateway", "replica", "token", "budget", "river", "engine", "harbour",
          "signal", "meadow", "ledger", "invoice", "orbit", "lantern")


@dataclass(frozen=True, slots=True)
class TrafficMix:
    """Shares of the arrivals: per workload, and the interactive share within every workload."""

    workloads: tuple[tuple[str, float], ...] = (("chat-a", 0.2), ("chat-b", 0.2), ("flood", 0.6))
    interactive_share: float = 0.2
    max_tokens: int = 48
    prompt_words: int = 48

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.workloads)


@dataclass(frozen=True, slots=True)
class Planned:
    workload: str
    objective: str  # "interactive" or "batch"
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Answer:
    request: Planned
    status: int
    ttft: float | None  # seconds from send to the first body chunk
    sent: float  # seconds after the run started
    ended: float  # seconds after the run started


def plan(count: int, mix: TrafficMix, seed: int) -> list[Planned]:
    """``count`` requests drawn from ``mix``; every prompt is unique (no prefix-cache effects)."""
    rng = random.Random(seed)
    names = list(mix.names)
    weights = [share for _, share in mix.workloads]
    planned = []
    for index in range(count):
        workload = rng.choices(names, weights)[0]
        objective = "interactive" if rng.random() < mix.interactive_share else "batch"
        prompt = f"{workload} request {index}: " + " ".join(rng.choice(_WORDS) for _ in range(mix.prompt_words))
        body = orjson.dumps({"model": MODEL, "prompt": prompt, "max_tokens": mix.max_tokens, "stream": True})
        headers = {
            "content-type": "application/json",
            "x-gateway-inference-objective": objective,
            "x-gateway-inference-fairness-id": workload,
            "x-workload-id": workload,
            "x-workload-criticality": "3",
        }
        planned.append(Planned(workload, objective, body, headers))
    return planned


async def _send(session: aiohttp.ClientSession, url: str, request: Planned, origin: float,
                patience: float) -> Answer:
    sent = time.monotonic()
    first: float | None = None
    status = GAVE_UP
    try:
        async with asyncio.timeout(patience):
            async with session.post(url, data=request.body, headers=request.headers) as response:
                async for _ in response.content.iter_any():
                    if first is None:
                        first = time.monotonic() - sent
                status = response.status
    except (TimeoutError, aiohttp.ClientError):
        status, first = GAVE_UP, None
    return Answer(request, status, first if status == 200 else None, sent - origin, time.monotonic() - origin)


async def send_open_loop(url: str, requests: list[Planned], rate: float, window: float, patience: float,
                         seed: int) -> list[Answer]:
    """Poisson arrivals at ``rate``/s for at most ``window`` seconds; each waits at most ``patience``."""
    gaps = random.Random(seed ^ 0x5EED)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        origin = time.monotonic()
        due = 0.0
        pending: list[asyncio.Task[Answer]] = []
        for request in requests:
            due += gaps.expovariate(rate)
            if due > window:
                break
            lag = origin + due - time.monotonic()
            if lag > 0:
                await asyncio.sleep(lag)
            pending.append(asyncio.create_task(_send(session, url + "/v1/completions", request, origin, patience)))
        return list(await asyncio.gather(*pending))
