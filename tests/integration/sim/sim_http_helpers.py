"""HTTP helpers shared by the simulator's integration tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["eventually", "post_json", "sample", "scrape", "stream"]


async def post_json(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(url, json=body) as response:
        raw = await response.read()
        try:
            return response.status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return response.status, raw.decode()


async def stream(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[tuple[float, bytes]]:
    """POST with ``stream: true``; every SSE ``data:`` payload with its arrival time (seconds)."""
    start = time.perf_counter()
    events = []
    async with http.post(url, json={**body, "stream": True}) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for line in response.content:
            if line.startswith(b"data: "):
                events.append((time.perf_counter() - start, line[6:].strip()))
    return events


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """Parsed ``/metrics``: family name to family."""
    async with http.get(url + "/metrics") as response:
        assert response.status == 200
        return {f.name: f for f in text_string_to_metric_families(await response.text())}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    """The value of sample ``name`` (with at least ``labels``) in a scrape."""
    for family in families.values():
        for s in family.samples:
            if s.name == name and labels.items() <= s.labels.items():
                return float(s.value)
    raise KeyError(name)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
