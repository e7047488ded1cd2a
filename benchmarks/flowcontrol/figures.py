"""What one run's answers say: high-priority TTFT, shedding, per-workload goodput and fairness."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from benchmarks.flowcontrol.traffic import Answer
from benchmarks.loadgen import percentile

__all__ = ["SHED", "jain_index", "run_figures"]

SHED = frozenset({429, 503})  # what the picker answers instead of serving: over capacity, TTL expired


def jain_index(values: Sequence[float]) -> float:
    """(Σx)² / (n·Σx²): 1.0 when all are equal, 1/n when one takes everything."""
    square_sum = sum(v * v for v in values)
    return sum(values) ** 2 / (len(values) * square_sum) if square_sum else float("nan")


def run_figures(answers: Sequence[Answer], workloads: Sequence[str], seconds: float) -> dict[str, Any]:
    """Figures of one run. Goodput is 200s per second of the arrival window, per workload."""
    high = [a for a in answers if a.request.objective == "interactive"]
    low = [a for a in answers if a.request.objective == "batch"]
    high_ttft = [a.ttft for a in high if a.ttft is not None]
    goodput = {name: sum(1 for a in answers if a.status == 200 and a.request.workload == name) / seconds
               for name in workloads}
    statuses = Counter(a.status for a in answers)
    return {
        "sent": len(answers),
        "high_sent": len(high),
        "high_ttft_p50_ms": percentile(high_ttft, 50) * 1e3 if high_ttft else None,
        "high_ttft_p90_ms": percentile(high_ttft, 90) * 1e3 if high_ttft else None,
        "high_served": sum(1 for a in high if a.status == 200) / len(high) if high else None,
        "low_sent": len(low),
        "low_shed": sum(1 for a in low if a.status in SHED) / len(low) if low else None,
        "low_served": sum(1 for a in low if a.status == 200) / len(low) if low else None,
        "goodput_rps": goodput,
        "jain": jain_index(list(goodput.values())),
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
    }
