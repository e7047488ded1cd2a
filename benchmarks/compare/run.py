"""The side-by-side benchmark: the picker against sglang-router, vllm-router and Envoy round-robin.

For every workload and contestant: fresh simulators (same seeds), the contestant in front
of them, the same seeded open-loop stream of streamed requests; TTFT and inter-token
latency at the client, prefix hit rate and requests per replica from the simulators, CPU
seconds of every process from /proc. Writes results.json, results.md and PNG plots to
``--out`` (default benchmarks/results/compare/). Exits 1 when a contestant failed.

    python -m benchmarks.compare.setup          # once: the peers into their own venv
    python -m benchmarks.compare [--quick] [--sweep] [--workloads shared-prefix,multi-turn]
        [--contestants picker,sglang-cache-aware] [--rate 20] [--seconds 20] [--replicas 4] [--seed 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.compare.contestants import Contestant, default_contestants
from benchmarks.compare.harness import RunPlan, failures, run_all, run_contestant
from benchmarks.compare.report import write_all
from benchmarks.compare.workloads import WORKLOADS, build

__all__ = ["compare", "main", "saturation_rate"]

OUT = Path(__file__).resolve().parents[1] / "results" / "compare"


def saturation_rate(rates: Sequence[float], points: Sequence[dict[str, Any]]) -> str | None:
    """The first offered rate the contestant no longer keeps up with: p90 TTFT over 10x its value at the
    lowest rate, more than 1% errors, or completed requests/s under 85% of the offered rate."""
    base = None
    for rate, point in zip(rates, points, strict=True):
        if "ttft_ms" not in point:
            return None
        p90 = point["ttft_ms"]["p90"]
        base = base if base is not None else p90
        if (p90 is None or (base and p90 > 10 * base) or point["errors"] > 0.01 * max(1, point["requests"])
                or point["requests_per_s"] < 0.85 * rate):
            return f"{rate:g}/s"
    return f"> {rates[-1]:g}/s" if rates else None


def compare(contestants: Sequence[Contestant], workloads: Sequence[str], plan: RunPlan, out: Path,
            sweep: tuple[str, Sequence[float], float] | None = None, plots: bool = True) -> dict[str, Any]:
    """Run everything and write the report; ``sweep`` is (workload, rates, seconds per rate)."""
    started = time.monotonic()
    report: dict[str, Any] = {"replicas": plan.replicas, "seed": plan.seed, "seconds": plan.seconds,
                              "contestants": [c.name for c in contestants], "workloads": {}}
    for name in workloads:
        workload = build(name, plan.rate, plan.seconds, plan.seed)
        rows = run_all(contestants, [workload], plan)
        report["workloads"][name] = {"description": workload.description, "rate": plan.rate, "rows": rows}
    if sweep is not None:
        name, rates, seconds = sweep
        per: dict[str, list[dict[str, Any]]] = {c.name: [] for c in contestants}
        for rate in rates:
            point_plan = RunPlan(plan.replicas, rate, seconds, plan.seed, plan.drain, plan.keep_logs, plan.idle)
            workload = build(name, rate, seconds, plan.seed)
            for contestant in contestants:
                per[contestant.name].append(run_contestant(contestant, workload, point_plan))
        report["sweep"] = {"workload": name, "rates": list(rates), "seconds": seconds, "contestants": per,
                           "saturation": {c: saturation_rate(rates, points) for c, points in per.items()}}
    report["failures"] = failures([r for w in report["workloads"].values() for r in w["rows"]]
                                  + [p for points in report.get("sweep", {}).get("contestants", {}).values()
                                     for p in points])
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    write_all(report, out, plots)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shared-prefix and multi-turn, 6 s each (~2 min)")
    parser.add_argument("--workloads", help=f"comma-separated, from {','.join(WORKLOADS)} (default: all)")
    parser.add_argument("--contestants", help="comma-separated names (default: all)")
    parser.add_argument("--rate", type=float, default=20.0, help="offered requests per second (Poisson)")
    parser.add_argument("--seconds", type=float, help="arrival window per run (default 20, quick 6)")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds after the window before cutting")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sweep", action="store_true", help="also sweep the offered rate on one workload")
    parser.add_argument("--sweep-only", action="store_true", help="the rate sweep alone")
    parser.add_argument("--sweep-workload", default="shared-prefix")
    parser.add_argument("--sweep-rates", default="10,20,40,60,80")
    parser.add_argument("--sweep-seconds", type=float, default=10.0, help="arrival window per rate")
    parser.add_argument("--idle", type=float, default=2.0, help="seconds of router CPU measured before traffic")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--keep-logs", action="store_true", help="copy every process log under --out/logs")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    workloads = (args.workloads or ("shared-prefix,multi-turn" if args.quick else ",".join(WORKLOADS))).split(",")
    if args.sweep_only:
        workloads = []
    seconds = args.seconds or (6.0 if args.quick else 20.0)
    contestants = default_contestants()
    if args.contestants:
        wanted = args.contestants.split(",")
        unknown = set(wanted) - {c.name for c in contestants}
        if unknown:
            parser.error(f"unknown contestants {sorted(unknown)}; choose from {[c.name for c in contestants]}")
        contestants = [c for c in contestants if c.name in wanted]
    for contestant in contestants:
        why = contestant.missing()
        print(f"{contestant.name:>22}: {'MISSING, ' + why if why else contestant.description}", flush=True)
    plan = RunPlan(args.replicas, args.rate, seconds, args.seed, args.drain,
                   args.out / "logs" if args.keep_logs else None, args.idle)
    sweep = (args.sweep_workload, [float(r) for r in args.sweep_rates.split(",")], args.sweep_seconds) \
        if args.sweep or args.sweep_only else None
    report = compare(contestants, workloads, plan, args.out, sweep, plots=not args.no_plots)
    print((args.out / "results.md").read_text())
    print(f"results in {args.out} ({report['wall_seconds']:.0f} s)")
    if report["failures"]:
        print("FAILED contestants:\n  " + "\n  ".join(report["failures"]), file=sys.stderr)
        return 1
    return 0
