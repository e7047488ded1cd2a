"""Running contestants on workloads: fresh simulators for every run, the same seeded stream for all.

A contestant that cannot run here is reported as missing with its reason. One that fails
(does not start, a process dies during the run, or every request fails) is reported as
failed, the other contestants still run, and ``failures()`` lists it so the command exits
non-zero: a broken contestant never hides as an empty row.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.compare.client import drive
from benchmarks.compare.contestants import Contestant
from benchmarks.compare.measure import CpuMeter, sim_stats
from benchmarks.compare.progress import Progress
from benchmarks.compare.summary import summarize_run
from benchmarks.compare.workloads import Workload
from epp.devstack.stack import Stack

__all__ = ["RunPlan", "failures", "run_all", "run_contestant"]


class RunPlan:
    def __init__(self, replicas: int, rate: float, seconds: float, seed: int, drain: float,
                 keep_logs: Path | None = None, idle: float = 2.0) -> None:
        self.replicas = replicas
        self.rate = rate
        self.seconds = seconds
        self.seed = seed
        self.drain = drain
        self.keep_logs = keep_logs
        self.idle = idle  # seconds the router's CPU is measured with no traffic (scrapes, health checks)


def _label(contestant: Contestant, workload: Workload, rate: float) -> str:
    return f"{workload.name} @{rate:g}/s {contestant.name}"


def run_contestant(contestant: Contestant, workload: Workload, plan: RunPlan) -> dict[str, Any]:
    """One contestant on one workload; never raises for the contestant's own failures."""
    row: dict[str, Any] = {"contestant": contestant.name, "workload": workload.name, "rate": plan.rate,
                           "description": contestant.description}
    missing = contestant.missing()
    if missing:
        return {**row, "status": "missing", "reason": missing}
    workdir = Path(tempfile.mkdtemp(prefix=f"epp-compare-{workload.name}-{contestant.name}-"))
    stack = Stack(workdir, plan.replicas, sim_args=workload.sim_args, picker_args=["--log-level", "warning"])
    running = None
    started = time.monotonic()
    try:
        stack.start_sims()
        running = contestant.start(stack)
        idle_meter = CpuMeter(running.processes)
        time.sleep(plan.idle)
        idle_cpu_per_s = sum(idle_meter.read().values()) / plan.idle if plan.idle > 0 else 0.0
        meter = CpuMeter({**running.processes, **{f"sim-{i}": s for i, s in enumerate(stack.sims)}})
        progress = Progress(_label(contestant, workload, plan.rate), int(plan.rate * plan.seconds))
        driven = time.monotonic()
        results, cut = asyncio.run(drive(running.url, workload, plan.rate, plan.seconds, plan.seed, plan.drain,
                                         progress))
        progress.close()
        cpu = meter.read()
        driven = time.monotonic() - driven
        crashed = running.crashed()
        stats = sim_stats(stack)
        cpu = {**{k: v for k, v in cpu.items() if not k.startswith("sim-")},
               "simulators": sum(v for k, v in cpu.items() if k.startswith("sim-"))}
        summary = summarize_run(results, cut, cpu, stats, idle_cpu_per_s * driven)
        if crashed:
            return {**row, **summary, "status": "failed", "reason": crashed}
        if results and summary["errors"] == len(results):
            return {**row, **summary, "status": "failed",
                    "reason": f"all {len(results)} requests failed: {summary['error_kinds']}"}
        if not results:
            return {**row, **summary, "status": "failed", "reason": "no request was sent"}
        return {**row, **summary, "status": "ok", "wall_s": round(time.monotonic() - started, 1)}
    except Exception as exc:  # noqa: BLE001 - any failure of one contestant is reported, the rest still run
        return {**row, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:2000]}
    finally:
        if running is not None:
            running.stop()
        stack.stop()
        if plan.keep_logs is not None:
            shutil.copytree(workdir, plan.keep_logs / f"{workload.name}-{plan.rate:g}-{contestant.name}",
                            dirs_exist_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)


def run_all(contestants: Sequence[Contestant], workloads: Sequence[Workload], plan: RunPlan) -> list[dict[str, Any]]:
    rows = []
    for workload in workloads:
        for contestant in contestants:
            row = run_contestant(contestant, workload, plan)
            if row["status"] != "ok":
                print(f"  {row['status'].upper()}: {contestant.name} on {workload.name}: {row['reason']}", flush=True)
            rows.append(row)
    return rows


def failures(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [f"{r['contestant']} on {r['workload']} @{r['rate']:g}/s: {r['reason']}"
            for r in rows if r["status"] == "failed"]
