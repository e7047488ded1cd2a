"""What the harness reads from the processes it started: CPU seconds (from /proc) and simulator counters."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from benchmarks.overhead.__main__ import process_cpu
from epp.devstack.processes import ManagedProcess
from epp.devstack.stack import Stack

__all__ = ["CpuMeter", "sim_stats", "tree_cpu"]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone while we looked
        if ppid == pid:
            found.append(int(entry.name))
    return found


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and every live descendant (0 once it is gone)."""
    total = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            total += process_cpu(current)
        except (OSError, IndexError, ValueError):
            continue
        stack.extend(_children(current))
    return total


class CpuMeter:
    """CPU seconds each named process used between ``__init__`` and ``read()``."""

    def __init__(self, processes: Mapping[str, ManagedProcess]) -> None:
        self._pids = {name: p.pid for name, p in processes.items()}
        self._start = {name: tree_cpu(pid) for name, pid in self._pids.items()}

    def read(self) -> dict[str, float]:
        return {name: max(0.0, tree_cpu(pid) - self._start[name]) for name, pid in self._pids.items()}


def sim_stats(stack: Stack, timeout: float = 5.0) -> list[dict[str, object]]:
    """``GET /sim/stats`` of every replica, in replica order."""
    stats = []
    for i in range(stack.replicas):
        with urllib.request.urlopen(f"http://{stack.sim_hostport(i)}/sim/stats", timeout=timeout) as response:
            stats.append(json.loads(response.read()))
    return stats

