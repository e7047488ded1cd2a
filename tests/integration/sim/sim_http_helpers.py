"""HTTP helpers shared by the simulator's integration tests."""

from __future__ import annotations

import functools
import time
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from epp.testing.waiting import eventually as wait_for_condition

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


# Simulator state changes are polled over HTTP: allow more than the helper's default 5 s.
eventually = functools.partial(wait_for_condition, timeout=10.0)
