"""Reading the picker and the simulators from outside: queue figures, idleness, CPU."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["QueueReading", "cpu_seconds", "queue_reading", "wait_sims_idle"]

_WAIT = "inference_extension_flow_control_request_queue_duration_seconds"
_SIZE = "inference_extension_flow_control_queue_size"
_PROMPT = 0.0001  # the first bucket of the queue-duration histogram, seconds


@dataclass(frozen=True, slots=True)
class QueueReading:
    """Cumulative queue-duration histogram figures and what is queued now."""

    waits: Counter[str]  # outcome -> requests that left the queue with it
    wait_seconds: float  # total time spent in flow control, all outcomes
    prompt: int  # requests that left within the histogram's first bucket (100 us): they did not wait
    queued: float  # inference_extension_flow_control_queue_size, summed over flows
    debug_queued: int | None  # /debug/flowcontrol queuedRequests (None: not served)

    def since(self, earlier: QueueReading) -> tuple[int, int, float]:
        """Since ``earlier``: requests through flow control, how many of them waited over 100 us,
        and their mean time in it (seconds)."""
        count = sum(self.waits.values()) - sum(earlier.waits.values())
        waited = count - (self.prompt - earlier.prompt)
        return count, waited, (self.wait_seconds - earlier.wait_seconds) / count if count else 0.0


async def queue_reading(admin_url: str) -> QueueReading:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(f"{admin_url}/metrics") as response:
            text = await response.text()
        async with session.get(f"{admin_url}/debug/flowcontrol") as response:
            debug = await response.json() if response.status == 200 else None
    waits: Counter[str] = Counter()
    wait_seconds = queued = 0.0
    prompt = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{_WAIT}_count":
                waits[sample.labels.get("outcome", "")] += int(sample.value)
            elif sample.name == f"{_WAIT}_bucket" and float(sample.labels.get("le", "inf")) <= _PROMPT:
                prompt += int(sample.value)
            elif sample.name == f"{_WAIT}_sum":
                wait_seconds += sample.value
            elif sample.name == _SIZE:
                queued += sample.value
    debug_queued = int(debug["queuedRequests"]) if isinstance(debug, dict) and "queuedRequests" in debug else None
    return QueueReading(waits, wait_seconds, prompt, queued, debug_queued)


async def wait_sims_idle(sim_hostports: list[str], timeout: float = 30.0) -> float:
    """Poll each simulator's /sim/stats until nothing runs or waits; returns the seconds it took."""
    start = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() - start < timeout:
            busy = 0
            for hostport in sim_hostports:
                async with session.get(f"http://{hostport}/sim/stats") as response:
                    stats = await response.json()
                busy += int(stats["running"]) + int(stats["waiting"])
            if not busy:
                break
            await asyncio.sleep(0.1)
    return time.monotonic() - start


def cpu_seconds(pid: int) -> float:
    """CPU time of all threads of ``pid`` so far, in nanoseconds resolution.

    ``/proc/<pid>/stat`` counts in clock ticks (10 ms): over a thousand requests that is
    10 us per request of rounding, a fifth of the cost being measured. The scheduler's
    own account, ``/proc/<pid>/task/*/schedstat`` (first field: ns on CPU), has none.
    Threads that exited before the reading are missed, so call it on a process whose
    threads live as long as it does (the picker's event loop and gRPC threads).
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended between listing and reading
    return total / 1e9
