"""One run (a contestant on a workload) reduced to the figures the report shows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.compare.client import Result

__all__ = ["ROUTER_ROLES", "summarize_run"]

# The processes a user runs to get routing; the simulators stand in for model servers.
ROUTER_ROLES = ("router", "envoy", "picker")


def _ms(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    # Nearest rank, as benchmarks/loadgen.py reports them: a percentile is a latency some request really saw.
    ordered = sorted(values)
    last = len(ordered) - 1
    return {f"p{q}": ordered[round(q / 100 * last)] * 1e3 for q in (50, 90, 99)}


def _error_kind(result: Result) -> str:
    return f"{result.status} {result.error.split(':', 1)[0][:40]}".strip()


def summarize_run(results: Sequence[Result], cut_sessions: int, cpu: Mapping[str, float],
                  sims: Sequence[Mapping[str, Any]], router_idle_cpu: float = 0.0) -> dict[str, Any]:
    """``router_idle_cpu``: what the router's processes would have used over the run without traffic
    (measured just before it), so the per-request figure can be given with and without it."""
    ok = [r for r in results if r.ok]
    makespan = (max(r.sent_at + r.latency for r in ok) - min(r.sent_at for r in ok)) if ok else 0.0
    queries = sum(int(s["prefix_queries"]) for s in sims)
    router_cpu = sum(v for role, v in cpu.items() if role in ROUTER_ROLES)
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_kinds": dict(Counter(_error_kind(r) for r in results if not r.ok).most_common(5)),
        "cut_sessions": cut_sessions,
        "ttft_ms": _ms([r.ttft for r in ok if r.ttft is not None]),
        "itl_ms": _ms([gap for r in ok for gap in r.gaps]),
        "output_tokens_per_s": sum(r.output_tokens for r in ok) / makespan if makespan else 0.0,
        "requests_per_s": len(ok) / makespan if makespan else 0.0,
        "prefix_hit_rate": sum(int(s["prefix_hits"]) for s in sims) / queries if queries else 0.0,
        "requests_per_replica": [int(s["requests_received"]) for s in sims],
        "cpu_s": {**{k: round(v, 3) for k, v in cpu.items()}},
        "router_cpu_s": router_cpu,
        "router_cpu_ms_per_request": router_cpu / len(ok) * 1e3 if ok else None,
        "router_idle_cpu_s": router_idle_cpu,
        "router_busy_cpu_ms_per_request": max(0.0, router_cpu - router_idle_cpu) / len(ok) * 1e3 if ok else None,
    }
