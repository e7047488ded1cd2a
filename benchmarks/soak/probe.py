"""What the picker holds, read from outside: its RSS and its admin endpoints.

Per-key structures come from ``/metrics`` (label sets per family, the prefix index size,
the running gauge), ``/debug/decisions`` (the decision log) and ``/debug/endpoints``
(dispatch estimates show as waiting requests the simulators do not have). ``/debug/state``
is read when the picker serves it (in-flight maps, per-model metric cache).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Snapshot", "rss_kib", "snapshot", "wait_idle"]

_SERIES_LABELS = ("le", "quantile")  # labels that split one label set into histogram/summary series


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Snapshot:
    rss_kib: int
    label_sets: dict[str, int]  # metric family -> distinct label sets
    prefix_index_entries: float
    running: dict[str, float]  # model -> running gauge, non-zero only
    decisions: int
    estimated_waiting: dict[str, int]  # endpoint -> waiting requests the picker still assumes
    metrics_page: tuple[int, float] = (0, 0.0)  # /metrics: bytes, seconds to fetch
    state: dict[str, Any] = field(default_factory=dict)  # /debug/state, when served

    def sizes(self) -> dict[str, Any]:
        return {"label sets (max per family)": max(self.label_sets.values(), default=0),
                "label sets (all families)": sum(self.label_sets.values()),
                "prefix index entries": self.prefix_index_entries, "decision log": self.decisions,
                "/metrics page KiB": self.metrics_page[0] // 1024, "/metrics fetch s": round(self.metrics_page[1], 2),
                **{f"state {k}": v for k, v in _flatten(self.state).items()}}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``/debug/state``'s nested sizes as ``a.b.c: n`` rows."""
    rows: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            rows.update(_flatten(value, f"{prefix}{key}."))
        else:
            rows[f"{prefix}{key}"] = value
    return rows


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def snapshot(admin_url: str, pid: int) -> Snapshot:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        fetch_start = time.monotonic()
        _, metrics = await _get(session, f"{admin_url}/metrics")
        fetch_seconds = time.monotonic() - fetch_start
        async with session.get(f"{admin_url}/debug/decisions?limit=1000") as response:
            decisions = len((await response.json())["decisions"])
        async with session.get(f"{admin_url}/debug/endpoints") as response:
            endpoints = (await response.json())["endpoints"]
        async with session.get(f"{admin_url}/debug/state") as response:
            state = await response.json() if response.status == 200 else {}
    label_sets: defaultdict[str, set[tuple[tuple[str, str], ...]]] = defaultdict(set)
    running: dict[str, float] = {}
    prefix = 0.0
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in _SERIES_LABELS))
            label_sets[family.name].add(labels)
            if family.name == "inference_objective_running_requests" and sample.value:
                running[sample.labels.get("model_name", "")[:60]] = sample.value
            if family.name == "inference_extension_prefix_indexer_size":
                prefix += sample.value
    estimated = {e["name"]: e["metrics"]["waitingQueueSize"] for e in endpoints if e["metrics"]["waitingQueueSize"]}
    return Snapshot(rss_kib(pid), {k: len(v) for k, v in label_sets.items()}, prefix, running, decisions, estimated,
                    (len(metrics.encode()), fetch_seconds), state)


async def wait_idle(admin_url: str, pid: int, timeout: float = 15.0) -> tuple[Snapshot, list[tuple[float, Any]]]:
    """Poll until nothing is running or estimated (or the timeout).

    Returns the last snapshot and, per poll, the seconds since the first and what was still held.
    """
    start = time.monotonic()
    polls: list[tuple[float, Any]] = []
    while True:
        snap = await snapshot(admin_url, pid)
        elapsed = round(time.monotonic() - start, 2)
        polls.append((elapsed, {"running": sum(snap.running.values()),
                                "estimated": sum(snap.estimated_waiting.values())}))
        if (not snap.running and not snap.estimated_waiting) or elapsed > timeout:
            return snap, polls
        await asyncio.sleep(0.25)
