"""SLO-aware routing against the default profile: attainment, goodput, predictor error and cost.

Per repetition, each picker gets a fresh stack (simulators of mixed speed, the picker, real
Envoy) and the same seeded open-loop stream: a warm-up phase (not measured; the predictor
learns each replica's speed from it) followed by the measured window. Requests carry tight
objectives, loose ones or none (``traffic.SloMix``); everything is streamed and measured
client-side. Pickers alternate within a repetition so machine noise hits both alike.

- ``slo-aware``: ``config/slo-aware.yaml``.
- ``default``: ``epp serve`` without a config (the built-in default profile).

Reported per picker (medians over repetitions): SLO attainment of requests with objectives
(tight, loose, all), goodput (requests meeting their objectives per second of the window),
p90 TTFT of requests without objectives, errors; for slo-aware also the predictor's held-out
median absolute percentage error (``/debug/predictor``), the mean predicted / measured TTFT
and TPOT (from the picker's histograms), and the prediction cost per request and per
candidate endpoint (``inference_objective_request_ttft_prediction_duration_seconds``).

    python -m benchmarks.slo.run [--quick] [--repetitions 3] [--rate 11] [--warmup 10]
        [--seconds 18] [--speeds 1,1,2,4] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from http.client import HTTPException
from pathlib import Path
from typing import Any

from benchmarks.loadgen import percentile
from benchmarks.overhead.__main__ import process_cpu
from benchmarks.slo.probe import PredictorReading, predictor_reading
from benchmarks.slo.traffic import Measured, Planned, SloMix, plan, send_open_loop
from epp.devstack.processes import StartupError
from epp.devstack.stack import Stack

_CONFIG = Path(__file__).resolve().parents[2] / "config"
PICKERS: dict[str, str | None] = {"slo-aware": (_CONFIG / "slo-aware.yaml").read_text(), "default": None}
AIMS = {"attainment_ratio": 1.3, "ttft_mape": 0.25, "us_per_candidate": 30.0, "none_p90_ratio": 1.10}


def start_stack(picker: str, args: argparse.Namespace, workdir: Path, attempt: int = 0) -> tuple[Stack, list[Stack]]:
    """The picker and Envoy in one stack, each simulator in its own one-replica stack: a stack gives all
    its simulators the same arguments, and each replica needs its own ``--speed``."""
    workdir = workdir / f"attempt-{attempt}"
    sims = [Stack(workdir / f"sim-{i}", 1, sim_args=["--speed", speed, "--max-num-seqs", str(args.max_num_seqs)])
            for i, speed in enumerate(args.speeds.split(","))]
    config = args.slo_config.read_text() if picker == "slo-aware" and args.slo_config else PICKERS[picker]
    stack = Stack(workdir / "picker", 0, config_text=config, picker_args=["--log-level", "warning"])
    try:
        for sim in sims:
            sim.workdir.mkdir(parents=True)
            sim.start_sims()
        stack.replicas, stack.sim_hosts = len(sims), [sim.host for sim in sims]
        stack.ports.sims = [sim.ports.sims[0] for sim in sims]
        stack.workdir.mkdir(parents=True)
        stack.start_picker()
        stack.start_envoy()
    except (StartupError, OSError, HTTPException) as error:
        stop(stack, sims)
        # Ports are picked free and bound later by another process: on a busy machine one can be taken
        # in between. A fresh set of ports is the cure.
        if attempt >= 2:
            raise
        print(f"stack start failed ({type(error).__name__}); retrying with other ports", flush=True)
        return start_stack(picker, args, workdir.parent, attempt + 1)
    except BaseException:
        stop(stack, sims)
        raise
    return stack, sims


def stop(stack: Stack, sims: list[Stack]) -> None:
    for part in (stack, *sims):
        part.stop()


async def _traffic(stack: Stack, requests: list[Planned], args: argparse.Namespace
                   ) -> tuple[list[Measured], PredictorReading]:
    """The whole stream, and the picker's figures when the warm-up ends (so the measured ones exclude it)."""
    async def at_warmup_end() -> PredictorReading:
        await asyncio.sleep(args.warmup)
        return await predictor_reading(stack.admin_url)

    return await asyncio.gather(
        send_open_loop(stack.url + "/v1/chat/completions", requests, args.warmup + args.seconds + 30),
        at_warmup_end())


def run_once(picker: str, args: argparse.Namespace, seed: int, workdir: Path) -> dict[str, Any]:
    requests = plan(args.rate, args.warmup + args.seconds, SloMix(), seed)
    stack, sims = start_stack(picker, args, workdir)
    try:
        cpu = process_cpu(stack.picker.pid if stack.picker else None)
        answers, at_warm = asyncio.run(_traffic(stack, requests, args))
        cpu = process_cpu(stack.picker.pid if stack.picker else None) - cpu
        reading = asyncio.run(predictor_reading(stack.admin_url)).since(at_warm)
    finally:
        stop(stack, sims)
    endpoints = {stack.sim_hostport(i): float(s) for i, s in enumerate(args.speeds.split(","))}
    result = measure([a for a in answers if a.request.at >= args.warmup], args.seconds, reading, endpoints)
    # The picker's whole CPU (routing, response streaming, refits) per request, warm-up included.
    # Histogram figures (prediction cost, mean predicted / measured latency, violations) are the
    # measured window's only: the warm-up's early predictions come from the prior.
    result["picker_cpu_ms_per_request"] = cpu / len(answers) * 1e3 if answers else None
    # The predictor's learnt speed factor (actual / shared model) per replica; the pool names them sim-<i>.
    factors = reading.debug.get("endpointFactors") or {}
    result["endpoint_factors"] = {f"sim-{i} x{speed}": factors.get(f"sim-{i}")
                                  for i, speed in enumerate(args.speeds.split(","))}
    return result


def measure(answers: list[Measured], seconds: float, reading: PredictorReading, speeds: dict[str, float]
            ) -> dict[str, Any]:
    def attainment(klass: str | None) -> float | None:
        chosen = [a for a in answers if a.request.objective.stated and klass in (None, a.request.klass)]
        return sum(a.met for a in chosen) / len(chosen) if chosen else None

    with_slo = [a for a in answers if a.request.objective.stated]
    none_ttft = [a.ttft_ms for a in answers if not a.request.objective.stated and a.status == 200
                 and a.ttft_ms is not None]
    # Where the objective requests went: share of them on each replica speed.
    on_speed: dict[str, int] = {}
    for a in with_slo:
        key = f"x{speeds.get(a.upstream, 0):g}"
        on_speed[key] = on_speed.get(key, 0) + 1
    # Why objective requests missed: TTFT over its objective, TPOT over its objective (both can).
    missed = {"ttft": sum(a.status == 200 and a.ttft_ms is not None and a.request.objective.ttft_ms is not None
                          and a.ttft_ms > a.request.objective.ttft_ms for a in with_slo),
              "tpot": sum(a.status == 200 and a.tpot_ms is not None and a.request.objective.tpot_ms is not None
                          and a.tpot_ms > a.request.objective.tpot_ms for a in with_slo),
              "failed": sum(a.status != 200 for a in with_slo)}
    # Median client-side TTFT and TPOT on each replica speed: what the objectives are up against.
    by_speed: dict[str, dict[str, float]] = {}
    for speed in sorted(set(speeds.values())):
        on = [a for a in answers if a.status == 200 and speeds.get(a.upstream) == speed]
        ttfts = [a.ttft_ms for a in on if a.ttft_ms is not None]
        tpots = [a.tpot_ms for a in on if a.tpot_ms is not None]
        by_speed[f"x{speed:g}"] = {"requests": len(on), "ttft_p50_ms": round(percentile(ttfts, 50), 1),
                                   "tpot_p50_ms": round(percentile(tpots, 50), 2)}
    ttft_err, tpot_err = reading.held_out_error()
    predictions = reading.predictions()
    cost_us = reading.sums["cost"][0] / predictions * 1e6 if predictions else None
    return {
        "requests": len(answers), "with_slo": len(with_slo),
        "errors": sum(a.status != 200 for a in answers),
        "attainment": attainment(None), "attainment_tight": attainment("tight"),
        "attainment_loose": attainment("loose"),
        "goodput_rps": sum(a.met for a in with_slo) / seconds,
        "none_ttft_p90_ms": percentile(none_ttft, 90) if none_ttft else None,
        "slo_on_speed": {k: round(v / len(with_slo), 3) for k, v in sorted(on_speed.items())} if with_slo else {},
        "missed": missed, "latency_by_speed": by_speed,
        "ttft_mape": ttft_err, "tpot_mape": tpot_err,
        "predicted_over_actual_ttft": _ratio(reading.mean("predicted_ttft"), reading.mean("actual_ttft")),
        "predicted_over_actual_tpot": _ratio(reading.mean("predicted_tpot"), reading.mean("actual_tpot")),
        "prediction_us_per_request": cost_us,
        "prediction_us_per_candidate": cost_us / len(speeds) if cost_us is not None else None,
        "last_prediction_us": reading.debug.get("lastPredictionMicroseconds"),
        "predictor_samples": reading.debug.get("samples"), "slo_violations": reading.violations,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


_MEDIAN_KEYS = ("attainment", "attainment_tight", "attainment_loose", "goodput_rps", "none_ttft_p90_ms",
                "errors", "ttft_mape", "tpot_mape", "predicted_over_actual_ttft", "predicted_over_actual_tpot",
                "prediction_us_per_request", "prediction_us_per_candidate",
                "picker_cpu_ms_per_request")


def medians(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in _MEDIAN_KEYS:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    return out


def compare(med: dict[str, dict[str, float | None]]) -> dict[str, Any]:
    slo, base = med["slo-aware"], med["default"]
    ratios = {
        "attainment_ratio": _ratio(slo["attainment"], base["attainment"]),
        "goodput_ratio": _ratio(slo["goodput_rps"], base["goodput_rps"]),
        "none_p90_ratio": _ratio(slo["none_ttft_p90_ms"], base["none_ttft_p90_ms"]),
    }
    checks = {
        "attainment >= 1.3x default": _at_least(ratios["attainment_ratio"], AIMS["attainment_ratio"]),
        "no-SLO p90 TTFT <= 1.10x default": _at_most(ratios["none_p90_ratio"], AIMS["none_p90_ratio"]),
        "TTFT prediction error < 25%": _at_most(slo["ttft_mape"], AIMS["ttft_mape"]),
        "prediction < 30 us per candidate": _at_most(slo["prediction_us_per_candidate"], AIMS["us_per_candidate"]),
    }
    return {"ratios": ratios, "aims_met": checks}


def _at_least(value: float | None, aim: float) -> bool | None:
    return None if value is None else value >= aim


def _at_most(value: float | None, aim: float) -> bool | None:
    return None if value is None else value <= aim


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(med: dict[str, dict[str, float | None]], summary: dict[str, Any]) -> None:
    print(f"\n{'picker':>10} {'attain':>7} {'tight':>6} {'loose':>6} {'goodput/s':>9} {'noSLO p90':>10}"
          f" {'errors':>6} {'TTFT err':>8} {'TPOT err':>8} {'us/req':>7} {'us/cand':>7}")
    for name, m in med.items():
        print(f"{name:>10} {_fmt(m['attainment'], '7.1%')} {_fmt(m['attainment_tight'], '6.1%')}"
              f" {_fmt(m['attainment_loose'], '6.1%')} {_fmt(m['goodput_rps'], '9.2f')}"
              f" {_fmt(m['none_ttft_p90_ms'], '8.0f')}ms {_fmt(m['errors'], '6.0f')}"
              f" {_fmt(m['ttft_mape'], '8.1%')} {_fmt(m['tpot_mape'], '8.1%')}"
              f" {_fmt(m['prediction_us_per_request'], '7.1f')} {_fmt(m['prediction_us_per_candidate'], '7.2f')}")
    r = summary["ratios"]
    print(f"slo-aware / default: attainment {_fmt(r['attainment_ratio'], '.2f')}x, goodput "
          f"{_fmt(r['goodput_ratio'], '.2f')}x, no-SLO p90 TTFT {_fmt(r['none_p90_ratio'], '.2f')}x")
    for aim, ok in summary["aims_met"].items():
        print(f"  {'met ' if ok else 'MISS' if ok is False else 'n/a '} {aim}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repetition, shorter phases (about a minute)")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--rate", type=float, default=11.0, help="arrivals per second (open loop)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of unmeasured traffic first")
    parser.add_argument("--seconds", type=float, default=18.0, help="measured arrival window")
    parser.add_argument("--speeds", default="1,1,2,4", help="epp sim --speed, one per replica (2 = twice as slow)")
    parser.add_argument("--max-num-seqs", type=int, default=16, help="running requests per replica")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--slo-config", type=Path,
                        help="another EndpointPickerConfig in place of config/slo-aware.yaml (diagnosis)")
    parser.add_argument("--json", type=Path, help="also write the full results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.repetitions = 1
        args.warmup, args.seconds = min(args.warmup, 8.0), min(args.seconds, 14.0)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in PICKERS}
    for rep in range(args.repetitions):
        for name in PICKERS:
            with tempfile.TemporaryDirectory(prefix=f"epp-slo-{name}-") as workdir:
                result = run_once(name, args, args.seed + rep, Path(workdir))
            runs[name].append(result)
            print(f"rep {rep + 1} {name:>10}: attainment {_fmt(result['attainment'], '.1%')}"
                  f" (tight {_fmt(result['attainment_tight'], '.1%')}, loose {_fmt(result['attainment_loose'], '.1%')})"
                  f" no-SLO p90 {_fmt(result['none_ttft_p90_ms'], '.0f')} ms, errors {result['errors']},"
                  f" SLO requests by speed {result['slo_on_speed']},"
                  f" picker CPU {_fmt(result['picker_cpu_ms_per_request'], '.2f')} ms/req", flush=True)
            print(f"    missed {result['missed']}; latency by replica speed {result['latency_by_speed']}", flush=True)
    med = {name: medians(r) for name, r in runs.items()}
    summary = compare(med)
    print_table(med, summary)
    report = {"load": {"rate": args.rate, "warmup": args.warmup, "seconds": args.seconds, "speeds": args.speeds,
                       "max_num_seqs": args.max_num_seqs, "repetitions": args.repetitions, "seed": args.seed,
                       "mix": repr(SloMix())},
              "medians": med, **summary, "runs": runs}
    print(json.dumps({"medians": med, **summary}))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
