"""Scale-out: several picker processes, with and without shared routing state (issue 15).

Part 1, routing quality: the shared-prefix and no-prefix workloads (benchmarks/routing)
through Envoy with 1 picker, 2 pickers each keeping its own state, and 2 pickers sharing
state through Redis (``--state-store``; skipped, saying so, while ``epp serve`` has no such
flag). Reported: p90 TTFT, prefix-cache hit rate, output tokens/s, picker CPU per request,
and the store's traffic per request (Redis INFO deltas: commands, bytes in and out).

Part 2, gateway capacity: the maximum requests/s of Envoy + picker with 1 worker and with
``--workers N`` (capacity.py), and the CPU each process used at each step.

Ratios are within one run. Bounded: every run has a request count and a deadline.

    python -m benchmarks.scaleout [--workloads shared-prefix,no-prefix] [--rate 8] [--seconds 10]
        [--workers 2] [--rates 200,400,600,800] [--step-seconds 3] [--repeats 3] [--skip-quality] [--skip-capacity]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.loadgen import median
from benchmarks.routing.workloads import build
from benchmarks.scaleout.capacity import sweep
from benchmarks.scaleout.quality import DIAGNOSTIC_VARIANTS, VARIANTS, run_variant, state_store_supported


def _ms(value: float | None) -> str:
    return f"{value:8.0f}ms" if value is not None else "       n/a"


def print_quality(name: str, description: str, results: dict[str, dict[str, Any]]) -> None:
    print(f"\n== {name}: {description}")
    print(f"{'picker setup':>18} {'TTFT p50':>10} {'TTFT p90':>10} {'mean':>10} {'stacked':>8} {'hit rate':>9} "
          f"{'out tok/s':>10} {'errors':>7} {'CPU/req':>9} {'store cmds/req':>15} {'store B in/out per req':>24}")
    for setup, r in results.items():
        store = (f"{r['store_commands_per_request']:15.1f} "
                 f"{r['store_bytes_in_per_request']:11.0f}/{r['store_bytes_out_per_request']:<12.0f}"
                 if "store_commands_per_request" in r else f"{'-':>15} {'-':>24}")
        print(f"{setup:>18} {_ms(r['ttft_p50_ms'])} {_ms(r['ttft_p90_ms'])} {_ms(r['ttft_mean_ms'])} "
              f"{r.get('collision_share', 0.0):8.2f} {r['hit_rate']:9.2f} {r['output_tokens_per_s']:10.0f} "
              f"{r['errors']:7d} {r['picker_cpu_ms_per_request']:7.2f}ms {store}")
    base = results.get("1 picker")
    if base and base["ttft_p90_ms"]:
        for setup, r in results.items():
            if setup != "1 picker" and r["ttft_p90_ms"]:
                print(f"{setup:>18}: p90 TTFT {r['ttft_p90_ms'] / base['ttft_p90_ms']:5.2f}x one picker's, hit rate "
                      f"{r['hit_rate']:.2f} vs {base['hit_rate']:.2f}, picker CPU/request "
                      f"{r['picker_cpu_ms_per_request'] / base['picker_cpu_ms_per_request']:5.2f}x")


def print_median_ratios(name: str, runs: list[dict[str, dict[str, Any]]]) -> None:
    """Each setup's p90 TTFT over one picker's in the same run: the median over runs, and each run's."""
    print(f"\n== {name}: p90 TTFT / 1 picker's p90 TTFT (same run), median of {len(runs)} runs")
    for setup in runs[0]:
        ratios = [r[setup]["ttft_p90_ms"] / r["1 picker"]["ttft_p90_ms"] for r in runs
                  if "1 picker" in r and r[setup]["ttft_p90_ms"] and r["1 picker"]["ttft_p90_ms"]]
        if ratios:
            print(f"{setup:>18}: {median(ratios):5.2f}x {[round(x, 2) for x in ratios]}")


def print_capacity(results: list[dict[str, Any]]) -> None:
    print("\n== gateway capacity: open-loop rate sweep, 4-token completions, simulators at time scale 0.01")
    print(f"{'workers':>8} {'offered':>8} {'achieved':>9} {'errors':>7} {'p50':>8} {'p90':>8}   CPU in cores: "
          "envoy / picker / sims / loadgen")
    for run in results:
        for s in run["steps"]:
            c = s["cores"]
            print(f"{run['workers']:>8} {s['offered']:8.0f} {s['achieved']:9.1f} {s['errors']:7d} "
                  f"{s['p50_ms'] or 0:6.1f}ms {s['p90_ms'] or 0:6.1f}ms   {c['envoy']:.2f} / {c['picker']:.2f} / "
                  f"{c['sims']:.2f} / {c['loadgen']:.2f}{'' if s['sustained'] else '  (not sustained)'}")
    singles = [r["max_rps"] for r in results if r["workers"] == 1]
    multis = [r for r in results if r["workers"] != 1]
    print(f"max sustained requests/s, median of {len(singles)} sweeps: 1 worker {median(singles):.0f} "
          f"{[round(v) for v in singles]}; {multis[0]['workers']} workers {median([r['max_rps'] for r in multis]):.0f} "
          f"{[round(r['max_rps']) for r in multis]}")
    # Sweeps alternate (1, N, 1, N, ...): each ratio pairs runs made back to back.
    ratios = [m["max_rps"] / s for s, m in zip(singles, multis, strict=True) if s]
    if ratios:
        print(f"{multis[0]['workers']} workers / 1 worker: median {median(ratios):.2f}x "
              f"{[round(r, 2) for r in ratios]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="shared-prefix,no-prefix")
    parser.add_argument("--rate", type=float, default=8.0, help="requests per second of the quality runs")
    parser.add_argument("--seconds", type=float, default=10.0, help="arrival window of each quality run")
    parser.add_argument("--replicas", type=int, default=4, help="simulated model servers in the quality runs")
    parser.add_argument("--workers", type=int, default=2, help="workers in the capacity sweep's N-worker run")
    parser.add_argument("--rates", default="150,250,350,450,550,650,800,1000", help="capacity sweep's offered rates")
    parser.add_argument("--step-seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3, help="capacity sweeps per worker count (medians reported)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--variants", help="picker setups of the quality runs, comma-separated names (default: "
                        f"{', '.join(v.name for v in VARIANTS)}; "
                        f"also {', '.join(v.name for v in DIAGNOSTIC_VARIANTS)})")
    parser.add_argument("--repeats-quality", type=int, default=1,
                        help="quality runs per workload; tables per run, then the medians of the p90 ratios")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-capacity", action="store_true")
    parser.add_argument("--json", type=Path, help="also write results here")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"rate": args.rate, "seconds": args.seconds, "quality": {}, "capacity": []}
    if not args.skip_quality:
        variants = list(VARIANTS)
        if args.variants:
            known = {v.name: v for v in (*VARIANTS, *DIAGNOSTIC_VARIANTS)}
            unknown = [n for n in args.variants.split(",") if n not in known]
            if unknown:
                parser.error(f"--variants: unknown {unknown}; known: {list(known)}")
            variants = [known[n] for n in args.variants.split(",")]
        if not state_store_supported():
            print("2 pickers shared: skipped, `epp serve` has no --state-store flag yet (issue 15, shared state)")
            variants = [v for v in variants if not v.shared]
        for name in args.workloads.split(","):
            workload = build(name, args.rate, args.seconds, args.seed)
            runs = []
            for _ in range(args.repeats_quality):
                results = {}
                for variant in variants:
                    with tempfile.TemporaryDirectory(prefix=f"epp-scaleout-{name}-") as workdir:
                        results[variant.name] = run_variant(workload, variant, args.replicas, args.rate,
                                                            args.seconds, Path(workdir))
                    print(f"{name:>14} {variant.name:>18}: done ({results[variant.name]['requests']} requests)",
                          flush=True)
                print_quality(name, workload.description, results)
                runs.append(results)
            report["quality"][name] = {"description": workload.description, "results": runs[0],
                                       "runs": runs}
            if len(runs) > 1:
                print_median_ratios(name, runs)
    if not args.skip_capacity:
        rates = [float(r) for r in args.rates.split(",")]
        for repeat in range(args.repeats):
            for workers in (1, args.workers):
                with tempfile.TemporaryDirectory(prefix=f"epp-scaleout-capacity-{workers}-") as workdir:
                    report["capacity"].append(sweep(workers, rates, args.step_seconds, Path(workdir)))
                print(f"capacity sweep {repeat + 1}/{args.repeats} with {workers} worker(s): done", flush=True)
        print_capacity(report["capacity"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
