"""The workload registry: per-workload request rate and average queue wait (seed 003, "Option A").

The controller records each arrival and each dispatch; plugins only read ``stats`` through
``WorkloadStatsView`` (``handle.workloads``) and never track requests here.

Both figures are exponentially decaying averages with time constant ``tau`` (60 s by
default), so each event costs O(1) and old behaviour fades:

- request rate: every arrival adds ``1/tau`` to a level that decays as ``exp(-dt/tau)``.
  For steady arrivals at ``r``/s the level settles at about ``r``; it is decayed at read
  time from the last arrival, so an idle workload's rate falls towards 0 without events.
- average wait: a mean over dispatched requests in which each older request's weight
  decays as ``exp(-dt/tau)``. Weights (not a per-event smoothing factor) make a burst of
  dispatches at the same instant count fully, and a constant wait ``w`` gives exactly ``w``.

The registry is bounded: at most ``max_workloads`` entries (the least recently seen is
evicted to make room), and ``expire(now)``, a cheap sweep the controller calls
periodically, drops entries not seen for ``idle_expiry`` seconds. An unknown workload reads
as ``WorkloadStats()`` (zeros).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from epp.flowcontrol.types import WorkloadStats

__all__ = ["WorkloadRegistry"]


@dataclass(slots=True)
class _Workload:
    rate_level: float = 0.0  # decayed arrival count / tau, as of rate_at
    rate_at: float = 0.0
    wait_sum: float = 0.0  # decayed sum of waits, as of wait_at
    wait_weight: float = 0.0  # decayed count of dispatches, as of wait_at
    wait_at: float = 0.0
    last_seen: float = 0.0
    arrivals: int = 0
    dispatches: int = 0


class WorkloadRegistry:
    """Per-workload moving averages, bounded in size; implements ``WorkloadStatsView``.

    Args:
        time_constant: ``tau`` of the moving averages, seconds (> 0).
        max_workloads: most workloads kept (>= 1).
        idle_expiry: seconds without an event after which ``expire`` drops a workload (> 0).
        clock: the time source of ``stats`` (which has no ``now`` argument); the same
            monotonic clock the controller passes as ``now``.
    """

    def __init__(
        self,
        *,
        time_constant: float = 60.0,
        max_workloads: int = 1024,
        idle_expiry: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(time_constant) and time_constant > 0):
            raise ValueError(f"time_constant must be finite and > 0, got {time_constant!r}")
        if max_workloads < 1:
            raise ValueError(f"max_workloads must be >= 1, got {max_workloads!r}")
        if not (idle_expiry > 0):
            raise ValueError(f"idle_expiry must be > 0, got {idle_expiry!r}")
        self._tau = time_constant
        self._max = max_workloads
        self._idle_expiry = idle_expiry
        self._clock = clock
        # Least recently seen first: eviction and expiry take from the front.
        self._workloads: OrderedDict[str, _Workload] = OrderedDict()

    def __len__(self) -> int:
        return len(self._workloads)

    def __contains__(self, workload_id: object) -> bool:
        return workload_id in self._workloads

    def record_arrival(self, workload_id: str, now: float) -> None:
        entry = self._touch(workload_id, now)
        entry.rate_level = entry.rate_level * self._decay(now - entry.rate_at) + 1.0 / self._tau
        entry.rate_at = max(entry.rate_at, now)
        entry.arrivals += 1

    def record_dispatch(self, workload_id: str, waited_seconds: float, now: float) -> None:
        if not math.isfinite(waited_seconds):
            return
        entry = self._touch(workload_id, now)
        decay = self._decay(now - entry.wait_at)
        entry.wait_sum = entry.wait_sum * decay + max(0.0, waited_seconds)
        entry.wait_weight = entry.wait_weight * decay + 1.0
        entry.wait_at = max(entry.wait_at, now)
        entry.dispatches += 1

    def stats(self, workload_id: str) -> WorkloadStats:
        return self.stats_at(workload_id, self._clock())

    def stats_at(self, workload_id: str, now: float) -> WorkloadStats:
        entry = self._workloads.get(workload_id)
        if entry is None:
            return WorkloadStats()
        return self._stats(entry, now)

    def expire(self, now: float) -> int:
        """Drop workloads idle for longer than ``idle_expiry``; returns how many were dropped."""
        cutoff = now - self._idle_expiry
        dropped = 0
        workloads = self._workloads
        while workloads:
            oldest = next(iter(workloads.values()))
            if oldest.last_seen >= cutoff:
                break
            workloads.popitem(last=False)
            dropped += 1
        return dropped

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """A JSON-ready copy for ``/debug/flowcontrol``."""
        at = self._clock() if now is None else now
        workloads: dict[str, Any] = {}
        for workload_id, entry in self._workloads.items():
            stats = self._stats(entry, at)
            workloads[workload_id] = {
                "requestRate": stats.request_rate,
                "averageWaitSeconds": stats.average_wait,
                "arrivals": entry.arrivals,
                "dispatches": entry.dispatches,
                "idleSeconds": max(0.0, at - entry.last_seen),
            }
        return {
            "timeConstantSeconds": self._tau,
            "maxWorkloads": self._max,
            "idleExpirySeconds": self._idle_expiry,
            "count": len(workloads),
            "workloads": workloads,
        }

    def _touch(self, workload_id: str, now: float) -> _Workload:
        workloads = self._workloads
        entry = workloads.get(workload_id)
        if entry is None:
            if len(workloads) >= self._max:
                workloads.popitem(last=False)
            entry = _Workload(rate_at=now, wait_at=now, last_seen=now)
            workloads[workload_id] = entry
        else:
            entry.last_seen = max(entry.last_seen, now)
            workloads.move_to_end(workload_id)
        return entry

    def _decay(self, elapsed: float) -> float:
        # A clock that steps back is treated as no time passing.
        return math.exp(-max(0.0, elapsed) / self._tau)

    def _stats(self, entry: _Workload, now: float) -> WorkloadStats:
        rate = entry.rate_level * self._decay(now - entry.rate_at)
        average = entry.wait_sum / entry.wait_weight if entry.wait_weight > 0 else 0.0
        return WorkloadStats(average_wait=average, request_rate=rate)
