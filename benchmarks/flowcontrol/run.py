"""Flow control under overload: does high-priority traffic keep flowing, fairly and cheaply?

One set of simulated vLLM replicas (``--max-num-seqs`` small, so capacity is clear) serves
two pickers, each behind its own real Envoy:

- ``fc``:  ``config/flow-control.yaml`` (the ``flowControl`` gate on; TTL scaled to the run);
- ``off``: the same file without the gate (same plugins and detector; the legacy rule
  sheds priority < 0 with 429 while the pool is saturated), or with ``--baseline default``
  the picker's built-in default config.

Traffic (traffic.py): three workloads (x-workload-id, also the fairness id; one floods
with 60% of arrivals), each 20% ``interactive`` (priority 100) and 80% ``batch``
(priority -1); open-loop Poisson arrivals (seeded) for ``--window`` seconds; a client
gives up after ``--patience`` seconds. Per repetition: ``off`` and ``fc`` at
``--overload`` times capacity, ``fc`` at ``--half`` times capacity (the TTFT reference),
then light open-loop traffic (``--cpu-rate`` one-token requests per second: the
simulators are nearly idle and, with the picker's between-scrape dispatch accounting,
the detector stays well below saturation, so nothing queues) on each picker for the CPU
cost, read from /proc/<pid>/task/*/schedstat (ns; /proc/<pid>/stat counts 10 ms ticks),
in ``--cpu-pairs`` alternating off/fc runs per repetition.

Reported (medians over ``--reps``): high-priority p90 TTFT (time to the first body byte)
with and without flow control and against half load (aim: within 1.5x); low-priority
shed rate (429/503 share); Jain's index of per-workload goodput (200s per second; every
workload asks for more than a third of capacity, so equal goodput is the fair outcome);
picker CPU per request with the queue on and off, and the difference: the median over all
off/fc pairs of every repetition (aim: at most 50 us); and, without the machine's noise,
the admission step alone in process (fastpath.py).

    python -m benchmarks.flowcontrol.run [--quick] [--reps 3] [--detector utilization|concurrency] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from benchmarks.flowcontrol import configs
from benchmarks.flowcontrol.fastpath import admission_cpu_us, director_cpu_us
from benchmarks.flowcontrol.figures import run_figures
from benchmarks.flowcontrol.probe import cpu_seconds, queue_reading, wait_sims_idle
from benchmarks.flowcontrol.traffic import MODEL, TrafficMix, plan, send_open_loop
from benchmarks.loadgen import run_open_loop
from epp.devstack.envoy import CONTROL_REQUEST_HEADERS, TEST_REQUEST_HEADERS
from epp.devstack.stack import Stack, StackPorts

# Simulated cost of one decode step at batch <= 8 with short contexts (docs/simulator.md):
# step_base 6 ms + decode_per_seq 30 us per sequence; the prefill of ~60 tokens adds ~2.5 ms.
_STEP_SECONDS = 0.006 + 8 * 3e-5
_PREFILL_SECONDS = 0.0025
# Envoy strips the objective and fairness-id headers clients send (config/envoy.yaml); here the
# load generator plays the trusted gateway that sets them, so only the other control headers go.
_TRUSTED = frozenset({"x-gateway-inference-objective", "x-gateway-inference-fairness-id"})
ENVOY_OPTIONS = {"strip_headers": [h for h in (*CONTROL_REQUEST_HEADERS, *TEST_REQUEST_HEADERS) if h not in _TRUSTED]}
AIMS = {"high_ttft_p90_vs_half": 1.5, "cpu_us_added": 50.0}


@dataclass(frozen=True, slots=True)
class Setup:
    replicas: int
    max_num_seqs: int
    time_scale: float
    stream_interval: int
    mix: TrafficMix

    @property
    def sim_args(self) -> list[str]:
        return ["--max-num-seqs", str(self.max_num_seqs), "--time-scale", f"{self.time_scale:g}",
                "--stream-interval", str(self.stream_interval), "--no-enable-prefix-caching"]

    @property
    def capacity_rps(self) -> float:
        """Requests per second the replicas complete when every sequence slot is busy (estimate)."""
        service = (self.mix.max_tokens * _STEP_SECONDS + _PREFILL_SECONDS) * self.time_scale
        return self.replicas * self.max_num_seqs / service


class Bench:
    """Both pickers on one set of simulators, and the runs against them."""

    def __init__(self, args: argparse.Namespace, setup: Setup, workdir: Path) -> None:
        self.args = args
        self.setup = setup
        base = configs.load_shipped(args.config)
        concurrency = setup.max_num_seqs if args.detector == "concurrency" else None
        picker_args = ["--log-level", "warning", "--objectives-file", str(configs.OBJECTIVES_FILE)]
        self.fc = Stack(workdir / "fc", setup.replicas, sim_args=setup.sim_args, picker_args=picker_args,
                        config_text=configs.flow_control(base, args.ttl, concurrency), envoy_options=ENVOY_OPTIONS)
        # The second picker scrapes and routes to the same simulators (its stack starts none).
        ports = StackPorts.free(0)
        # ``None``: no --config-file, the picker's built-in default profile.
        off_config = configs.gate_off(base, concurrency) if args.baseline == "gate-off" else None
        self.off = Stack(workdir / "off", setup.replicas, ports=ports, picker_args=picker_args,
                         config_text=off_config, envoy_options=ENVOY_OPTIONS)
        self.stacks = {"fc": self.fc, "off": self.off}

    def start(self) -> None:
        self.fc.start()
        self.off.ports.sims = list(self.fc.ports.sims)
        self.off.workdir.mkdir(parents=True, exist_ok=True)
        self.off.start_picker()
        self.off.start_envoy()

    def stop(self) -> None:
        self.off.stop()
        self.fc.stop()

    @property
    def sims(self) -> list[str]:
        return [self.fc.sim_hostport(i) for i in range(self.setup.replicas)]

    async def overload_run(self, picker: str, load: float, seed: int) -> dict[str, Any]:
        rate = load * self.setup.capacity_rps
        window = self.args.window
        requests = plan(math.ceil(rate * window * 1.5) + 20, self.setup.mix, seed)
        answers = await send_open_loop(self.stacks[picker].url, requests, rate, window, self.args.patience, seed)
        figures = run_figures(answers, self.setup.mix.names, window)
        figures["drain_s"] = round(await wait_sims_idle(self.sims), 2)
        if picker == "fc":
            reading = await queue_reading(self.fc.admin_url)
            figures["queued_after_drain"] = reading.debug_queued if reading.debug_queued is not None else reading.queued
        return figures

    async def idle_cpu_shares(self) -> dict[str, float]:
        """CPU seconds per second each picker spends with no traffic (scrapes, timers), measured together."""
        pids = {name: stack.picker.pid for name, stack in self.stacks.items() if stack.picker is not None}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.monotonic()
        await asyncio.sleep(self.args.idle_seconds)
        elapsed = time.monotonic() - started
        return {name: (cpu_seconds(pid) - before[name]) / elapsed for name, pid in pids.items()}

    async def cpu_run(self, picker: str) -> dict[str, float]:
        """Picker CPU seconds and requests under light open-loop traffic, and what waited in the queue."""
        stack = self.stacks[picker]
        assert stack.picker is not None
        body = orjson.dumps({"model": MODEL, "prompt": "How long is a short answer?", "max_tokens": 1})
        light = [("light", body)] * self.args.cpu_requests
        before_queue = await queue_reading(stack.admin_url)
        cpu_before = cpu_seconds(stack.picker.pid)
        outcomes, _ = await run_open_loop(f"{stack.url}/v1/completions", light, self.args.cpu_rate,
                                          self.args.cpu_requests / self.args.cpu_rate * 2, self.args.seed)
        cpu = cpu_seconds(stack.picker.pid) - cpu_before
        through_queue, waited, _ = (await queue_reading(stack.admin_url)).since(before_queue)
        await wait_sims_idle(self.sims)
        return {"requests": len(outcomes), "ok": sum(1 for o in outcomes if o.status == 200), "cpu_s": cpu,
                "through_flow_control": through_queue, "waited_over_100us": waited}

    async def cpu_pairs(self, first: str) -> dict[str, Any]:
        """``--cpu-pairs`` runs on each picker, alternating, so drift of the machine hits both alike."""
        idle = await self.idle_cpu_shares()
        totals = {name: Counter[str]() for name in self.stacks}
        added = []
        order = (first, "fc" if first == "off" else "off")
        for pair in range(self.args.cpu_pairs):
            runs = {name: await self.cpu_run(name) for name in (order if pair % 2 == 0 else order[::-1])}
            added.append((runs["fc"]["cpu_s"] / runs["fc"]["requests"] - runs["off"]["cpu_s"]
                          / runs["off"]["requests"]) * 1e6)
            for name, run in runs.items():
                totals[name].update(run)
        result: dict[str, Any] = {name: {
            "requests": int(t["requests"]), "ok": int(t["ok"]), "cpu_us_per_request": t["cpu_s"] / t["requests"] * 1e6,
            "idle_cpu_share": idle[name]} for name, t in totals.items()}
        result["fc"]["waited_over_100us"] = int(totals["fc"]["waited_over_100us"])
        result["added_us_per_pair"] = added
        return result

    async def repetition(self, rep: int) -> dict[str, Any]:
        seed = self.args.seed + rep
        result: dict[str, Any] = {}
        # Alternate which picker goes first so slow drift of the machine hits both alike.
        order = ("off", "fc") if rep % 2 == 0 else ("fc", "off")
        for picker in order:
            result[f"{picker}_overload"] = await self.overload_run(picker, self.args.overload, seed)
            print(f"rep {rep + 1} {picker:>3} at {self.args.overload:g}x: {_brief(result[f'{picker}_overload'])}",
                  flush=True)
        result["fc_half"] = await self.overload_run("fc", self.args.half, seed)
        print(f"rep {rep + 1}  fc at {self.args.half:g}x: {_brief(result['fc_half'])}", flush=True)
        cpu = await self.cpu_pairs(order[0])
        result["off_cpu"], result["fc_cpu"] = cpu["off"], cpu["fc"]
        result["cpu_us_added_per_pair"] = cpu["added_us_per_pair"]
        print(f"rep {rep + 1} picker CPU per request: off {cpu['off']['cpu_us_per_request']:.0f} us, "
              f"fc {cpu['fc']['cpu_us_per_request']:.0f} us; fc - off per pair: "
              + ", ".join(f"{x:+.0f}" for x in cpu["added_us_per_pair"])
              + f" us; waited > 100 us: {cpu['fc']['waited_over_100us']}", flush=True)
        return result


def _brief(figures: dict[str, Any]) -> str:
    p90 = figures["high_ttft_p90_ms"]
    return (f"{figures['sent']} sent, high p90 TTFT {p90:.0f} ms" if p90 is not None else "no high-priority TTFT") + (
        f", low shed {figures['low_shed']:.0%}, Jain {figures['jain']:.3f}, statuses {figures['statuses']}")


def _median(runs: list[dict[str, Any]], arm: str, key: str) -> float | None:
    values = [r[arm][key] for r in runs if r[arm].get(key) is not None and not math.isnan(r[arm][key])]
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(runs: list[dict[str, Any]], setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    medians: dict[str, dict[str, Any]] = {arm: {key: _median(runs, arm, key) for key in keys} for arm, keys in (
        ("off_overload", ("high_ttft_p90_ms", "high_served", "low_shed", "low_served", "jain")),
        ("fc_overload", ("high_ttft_p90_ms", "high_served", "low_shed", "low_served", "jain")),
        ("fc_half", ("high_ttft_p90_ms", "high_served", "low_shed", "jain")),
        ("off_cpu", ("cpu_us_per_request", "idle_cpu_share")),
        ("fc_cpu", ("cpu_us_per_request", "idle_cpu_share", "waited_over_100us")),
    )}
    for arm in ("off_overload", "fc_overload", "fc_half"):
        medians[arm]["goodput_rps"] = {name: statistics.median(r[arm]["goodput_rps"][name] for r in runs)
                                       for name in setup.mix.names}
    # One pooled median over every pair of every repetition: each pair is an independent
    # fc-minus-off sample, and the pairs are what the machine's noise varies between.
    added = [x for r in runs for x in r["cpu_us_added_per_pair"]]
    fc, off, half = medians["fc_overload"], medians["off_overload"], medians["fc_half"]
    vs_half = _ratio(fc["high_ttft_p90_ms"], half["high_ttft_p90_ms"])
    cpu_added = statistics.median(added)
    return {
        "setup": {"replicas": setup.replicas, "max_num_seqs": setup.max_num_seqs, "time_scale": setup.time_scale,
                  "max_tokens": setup.mix.max_tokens, "capacity_rps_estimate": round(setup.capacity_rps, 1),
                  "overload": args.overload, "half": args.half, "window_s": args.window, "patience_s": args.patience,
                  "ttl_s": args.ttl, "detector": args.detector, "baseline": args.baseline,
                  "cpu_rate": args.cpu_rate,
                  "cpu_requests": args.cpu_requests, "cpu_pairs": args.cpu_pairs, "reps": args.reps, "seed": args.seed},
        "medians": medians,
        "high_ttft_p90_fc_vs_off": _ratio(fc["high_ttft_p90_ms"], off["high_ttft_p90_ms"]),
        "high_ttft_p90_fc_vs_half": vs_half,
        "cpu_us_added_per_request": cpu_added,
        "cpu_us_added_per_pair": added,
        "aims_met": {"high_ttft_p90_vs_half": vs_half is not None and vs_half <= AIMS["high_ttft_p90_vs_half"],
                     "cpu_us_added": cpu_added <= AIMS["cpu_us_added"]},
        "runs": runs,
    }


def _cell(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "n/a"


def _met(report: dict[str, Any], aim: str) -> str:
    return "met" if report["aims_met"][aim] else "NOT met"


def print_table(report: dict[str, Any]) -> None:
    m = report["medians"]
    s = report["setup"]
    print(f"\nmedians of {s['reps']} repetition(s); capacity ~{s['capacity_rps_estimate']} req/s "
          f"({s['replicas']} replicas x {s['max_num_seqs']} seqs, {s['max_tokens']} tokens), detector {s['detector']}, "
          f"off = {s['baseline']}")
    print(f"{'':28} {'off ' + str(s['overload']) + 'x':>12} {'fc ' + str(s['overload']) + 'x':>12}"
          f" {'fc ' + str(s['half']) + 'x':>12}")
    rows = (("high-priority p90 TTFT ms", "high_ttft_p90_ms", ".0f"), ("high-priority served", "high_served", ".1%"),
            ("low-priority shed (429/503)", "low_shed", ".1%"), ("low-priority served", "low_served", ".1%"),
            ("Jain index, workload goodput", "jain", ".3f"))
    for label, key, spec in rows:
        print(f"{label:28} {_cell(m['off_overload'].get(key), spec):>12} {_cell(m['fc_overload'].get(key), spec):>12}"
              f" {_cell(m['fc_half'].get(key), spec):>12}")
    for name in m["fc_overload"]["goodput_rps"]:
        cells = " ".join(f"{_cell(m[arm]['goodput_rps'][name], '.1f'):>12}"
                         for arm in ("off_overload", "fc_overload", "fc_half"))
        print(f"{'goodput ' + name + ' req/s':28} {cells}")
    print(f"\nhigh p90 TTFT, fc/off at {s['overload']}x: {_cell(report['high_ttft_p90_fc_vs_off'], '.2f')}; "
          f"fc {s['overload']}x / fc {s['half']}x: {_cell(report['high_ttft_p90_fc_vs_half'], '.2f')} "
          f"(aim <= {AIMS['high_ttft_p90_vs_half']}: {_met(report, 'high_ttft_p90_vs_half')})")
    off_cpu, fc_cpu = m["off_cpu"], m["fc_cpu"]
    print(f"picker CPU per request at {s['cpu_rate']:g} req/s: off {_cell(off_cpu['cpu_us_per_request'], '.0f')} us, "
          f"fc {_cell(fc_cpu['cpu_us_per_request'], '.0f')} us (idle CPU share: off "
          f"{_cell(off_cpu['idle_cpu_share'], '.1%')}, fc {_cell(fc_cpu['idle_cpu_share'], '.1%')})")
    per_pair = ", ".join(f"{x:+.0f}" for x in report["cpu_us_added_per_pair"])
    print(f"flow control adds {report['cpu_us_added_per_request']:+.1f} us CPU per request "
          f"(median of pairs: {per_pair}; "
          f"aim <= {AIMS['cpu_us_added']:g}: {_met(report, 'cpu_us_added')}); requests that waited over 100 us "
          f"meanwhile: {_cell(fc_cpu['waited_over_100us'], '.0f')}")
    print(f"the admission step alone, in process (fastpath.py): {report['admission_fast_path_us']:.1f} us CPU per "
          f"request that does not wait")
    d = report["director_us"]
    print(f"the whole director per request, in process: off {d['off']:.1f} us, fc {d['fc']:.1f} us: the gate adds "
          f"{report['director_us_added']:+.1f} us (aim <= {AIMS['cpu_us_added']:g}: "
          f"{_met(report, 'director_us_added')})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flowcontrol.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short repetition (~1 minute)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--max-num-seqs", type=int, default=4)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--stream-interval", type=int, default=4, help="tokens per streamed chunk")
    parser.add_argument("--overload", type=float, default=2.0, help="offered load / capacity")
    parser.add_argument("--half", type=float, default=0.5, help="reference load / capacity")
    parser.add_argument("--window", type=float, default=8.0, help="seconds of arrivals per run")
    parser.add_argument("--patience", type=float, default=5.0, help="seconds a client waits for its answer")
    parser.add_argument("--ttl", type=float, default=3.0, help="flow control defaultRequestTTL, seconds")
    parser.add_argument("--detector", choices=["utilization", "concurrency"], default="concurrency",
                        help="saturation detector: concurrency-detector with maxConcurrency = --max-num-seqs "
                             "(what config/flow-control.yaml recommends for protecting high-priority TTFT), or "
                             "the shipped utilization-detector")
    parser.add_argument("--baseline", choices=["gate-off", "default"], default="gate-off",
                        help="the 'off' picker: the flow-control config without its gate (same plugins and "
                             "detector), or epp serve's built-in default config")
    parser.add_argument("--config", type=Path, default=configs.SHIPPED, help="flow-control EndpointPickerConfig")
    parser.add_argument("--cpu-requests", type=int, default=400, help="requests of each light-load CPU run")
    parser.add_argument("--cpu-pairs", type=int, default=3, help="off/fc CPU run pairs per repetition")
    parser.add_argument("--cpu-rate", type=float, default=100.0,
                        help="requests per second of the CPU runs (a closed loop at ~200/s already makes the "
                             "utilization detector read the pool as saturated between scrapes)")
    parser.add_argument("--idle-seconds", type=float, default=2.0, help="idle CPU measurement per repetition")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the full report here")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.window, args.patience, args.cpu_requests = 1, 6.0, 5.0, 300
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mix = TrafficMix(max_tokens=args.max_tokens)
    setup = Setup(args.replicas, args.max_num_seqs, args.time_scale, args.stream_interval, mix)
    with tempfile.TemporaryDirectory(prefix="epp-flowcontrol-") as workdir:
        bench = Bench(args, setup, Path(workdir))
        try:
            bench.start()
            runs = [asyncio.run(bench.repetition(rep)) for rep in range(args.reps)]
        finally:
            bench.stop()
    report = summarize(runs, setup, args)
    assert bench.fc.config_text is not None
    report["admission_fast_path_us"] = admission_cpu_us(bench.fc.config_text)
    director: dict[str, list[float]] = {"fc": [], "off": []}  # interleaved, so drift hits both alike
    for _ in range(3):
        director["fc"].append(director_cpu_us(bench.fc.config_text))
        director["off"].append(director_cpu_us(bench.off.config_text))
    report["director_us"] = {k: statistics.median(v) for k, v in director.items()}
    report["director_us_added"] = report["director_us"]["fc"] - report["director_us"]["off"]
    report["aims_met"]["director_us_added"] = report["director_us_added"] <= AIMS["cpu_us_added"]
    print_table(report)
    compact = {k: v for k, v in report.items() if k != "runs"}
    print(json.dumps(compact, separators=(",", ":")))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
