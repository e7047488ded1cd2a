"""The client side: sessions sent with Poisson arrivals, streamed, timed token by token.

TTFT is the arrival of the first chunk carrying generated text; inter-token latency is the
gap between successive chunks with text (the simulators send one token per chunk). Both are
measured here, at the client, so they include everything the router adds. Sessions start
open loop at ``rate / turns per session`` per second; a session's later turns wait for the
previous answer. Bounded: at most ``len(sessions)`` sessions, none started after
``seconds``, and whatever is still running ``drain`` seconds later is cancelled and counted
as an error.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import aiohttp

from benchmarks.compare.progress import Progress
from benchmarks.compare.workloads import Session, Workload, next_turn

__all__ = ["Result", "drive"]


@dataclass(slots=True)
class Result:
    tag: str
    turn: int
    status: int
    sent_at: float
    latency: float = 0.0
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)  # inter-token latencies
    output_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


def _event(line: bytes) -> dict[str, object] | None:
    line = line.strip()
    if not line.startswith(b"data:"):
        return None
    payload = line[5:].strip()
    if payload == b"[DONE]":
        return None
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _text_of(event: dict[str, object]) -> str:
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta") or {}
    return str(delta.get("content") or choice.get("text") or "")


def _read_usage(result: Result, event: dict[str, object]) -> None:
    usage = event.get("usage")
    if not isinstance(usage, dict):
        return
    result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    result.output_tokens = int(usage.get("completion_tokens") or 0)
    result.cached_tokens = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


async def _request(session: aiohttp.ClientSession, url: str, body: bytes, tag: str, turn: int
                   ) -> tuple[Result, str]:
    start = time.monotonic()
    result = Result(tag, turn, 0, start)
    answer: list[str] = []
    last = 0.0
    try:
        async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
            result.status = response.status
            if response.status != 200:
                result.error = (await response.text())[:200]
            else:
                async for line in response.content:
                    event = _event(line)
                    if event is None:
                        continue
                    _read_usage(result, event)
                    text = _text_of(event)
                    if not text:
                        continue
                    now = time.monotonic()
                    if result.ttft is None:
                        result.ttft = now - start
                    else:
                        result.gaps.append(now - last)
                    last = now
                    answer.append(text)
                if result.ttft is None:
                    result.error = "stream ended without a token"
    except (TimeoutError, aiohttp.ClientError) as exc:
        result.status = result.status or 599
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    result.latency = time.monotonic() - start
    return result, "".join(answer)


async def _session(client: aiohttp.ClientSession, url: str, session: Session, results: list[Result],
                   progress: Progress | None) -> None:
    body = session.first
    for turn in range(session.turns):
        result, answer = await _request(client, url, body, session.tag, turn)
        results.append(result)
        if progress is not None:
            progress.advance(result.ok)
        if not result.ok or turn == len(session.followups):
            return
        body = next_turn(body, answer, session.followups[turn])


async def drive(url: str, workload: Workload, rate: float, seconds: float, seed: int, drain: float,
                progress: Progress | None = None, request_timeout: float = 60.0) -> tuple[list[Result], int]:
    """Run the workload against ``url``; returns the results and how many sessions were cut at the deadline."""
    rng = random.Random(seed)
    session_rate = rate / workload.turns_per_session
    results: list[Result] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        start = time.monotonic()
        next_at = start
        tasks = []
        for session in workload.sessions:
            next_at += rng.expovariate(session_rate)
            if next_at - start > seconds:
                break
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            tasks.append(asyncio.create_task(_session(client, url + workload.path, session, results, progress)))
        if not tasks:
            return results, 0
        _, pending = await asyncio.wait(tasks, timeout=drain)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return results, len(pending)
