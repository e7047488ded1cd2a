"""The ``python_*`` and ``process_*`` families that ``prometheus_client`` adds to every page.

Real vLLM and SGLang pages carry them, so a scraper pays for them too. Values come from the
simulator's own process (shared by all replicas in it) and are refreshed at most once a
second, which keeps a 50 ms scrape from reading ``/proc`` every time.

``process_start_time_seconds`` is the time the replica's page was created, not the
process's: each replica started (a new ``epp sim`` process, or a page rebuilt on a
simulated restart) reports a new value, as a restarted vLLM does. The picker reads a change
as a restart and drops what it kept for that endpoint.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import time

from epp.sim.metrics.prom import fmt

__all__ = ["ProcessFamilies"]

# How long rendered process/GC values are reused; Prometheus scrapes of them are coarse anyway.
_REFRESH_SECONDS = 1.0

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _python_info() -> str:
    major, minor, patch = platform.python_version_tuple()
    return (
        "# HELP python_info Python platform information\n# TYPE python_info gauge\n"
        f'python_info{{implementation="{platform.python_implementation()}",major="{major}",'
        f'minor="{minor}",patchlevel="{patch}",version="{platform.python_version()}"}} 1.0\n'
    )


def _gc_text() -> str:
    stats = gc.get_stats()
    lines = [
        "# HELP python_gc_objects_collected_total Objects collected during gc\n",
        "# TYPE python_gc_objects_collected_total counter\n",
    ]
    lines += [f'python_gc_objects_collected_total{{generation="{i}"}} {fmt(s["collected"])}\n'
              for i, s in enumerate(stats)]
    lines += [
        "# HELP python_gc_objects_uncollectable_total Uncollectable objects found during GC\n",
        "# TYPE python_gc_objects_uncollectable_total counter\n",
    ]
    lines += [f'python_gc_objects_uncollectable_total{{generation="{i}"}} {fmt(s["uncollectable"])}\n'
              for i, s in enumerate(stats)]
    lines += [
        "# HELP python_gc_collections_total Number of times this generation was collected\n",
        "# TYPE python_gc_collections_total counter\n",
    ]
    lines += [f'python_gc_collections_total{{generation="{i}"}} {fmt(s["collections"])}\n'
              for i, s in enumerate(stats)]
    return "".join(lines)


def _process_text(start_time: float, max_fds: int) -> str:
    times = os.times()
    try:
        with open("/proc/self/statm", "rb") as f:
            vm_pages, rss_pages = (int(x) for x in f.read().split()[:2])
        open_fds = len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: report what resource knows
        vm_pages = 0
        rss_pages = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 // _PAGE_SIZE
        open_fds = 0
    return (
        "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
        "# TYPE process_virtual_memory_bytes gauge\n"
        f"process_virtual_memory_bytes {fmt(vm_pages * _PAGE_SIZE)}\n"
        "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
        "# TYPE process_resident_memory_bytes gauge\n"
        f"process_resident_memory_bytes {fmt(rss_pages * _PAGE_SIZE)}\n"
        "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
        "# TYPE process_start_time_seconds gauge\n"
        f"process_start_time_seconds {fmt(start_time)}\n"
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
        "# TYPE process_cpu_seconds_total counter\n"
        f"process_cpu_seconds_total {fmt(round(times.user + times.system, 2))}\n"
        "# HELP process_open_fds Number of open file descriptors.\n"
        "# TYPE process_open_fds gauge\n"
        f"process_open_fds {fmt(open_fds)}\n"
        "# HELP process_max_fds Maximum number of open file descriptors.\n"
        "# TYPE process_max_fds gauge\n"
        f"process_max_fds {fmt(max_fds)}\n"
    )


class ProcessFamilies:
    """Renders the GC, platform and process families, refreshed at most once a second."""

    __slots__ = ("_start", "_max_fds", "_info", "_text", "_at")

    def __init__(self, start_time: float) -> None:
        self._start = start_time
        self._max_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._info = _python_info()
        self._text = ""
        self._at = float("-inf")

    def render(self) -> str:
        now = time.monotonic()
        if now - self._at >= _REFRESH_SECONDS:
            self._text = _gc_text() + self._info + _process_text(self._start, self._max_fds)
            self._at = now
        return self._text
