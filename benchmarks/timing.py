"""Micro-benchmark timing: the median over batches, in microseconds per call."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable

__all__ = ["median_us", "median_cpu_us_async"]


def median_us(fn: Callable[[], object], batches: int = 7, n: int = 300) -> float:
    """Wall time per call of ``fn``: median of ``batches`` batches of ``n`` calls."""
    samples = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - start) / n)
    return statistics.median(samples) * 1e6


async def median_cpu_us_async(fn: Callable[[], Awaitable[object]], batches: int = 7, n: int = 300) -> float:
    """CPU time of this process per awaited call (what a client costs, not its server)."""
    samples = []
    for _ in range(batches):
        start = time.process_time()
        for _ in range(n):
            await fn()
        samples.append((time.process_time() - start) / n)
    return statistics.median(samples) * 1e6
