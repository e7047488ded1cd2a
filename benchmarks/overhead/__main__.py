"""Overhead of the picker's decision over the bare ext_proc transport, through real Envoy.

Four paths to the same simulated vLLM servers, measured in one run, interleaved round
by round so machine noise hits all of them alike:

- direct: Envoy round-robins to the simulators itself (no ext_proc);
- noop:   Envoy + a no-op ext_proc server (same protocol, round-robin, no decision);
- picker: Envoy (config/envoy.yaml, the GIE-standard single filter) + ``epp serve`` with
          the default profile (queue, KV cache, prefix);
- fast:   Envoy (config/envoy-fast.yaml: responses observed, never waited on) + the same
          picker process.

Load: wrk when installed (``apt-get install wrk``), else the Python load generator in its
own process; closed loop, bounded by time per round. With ``--stream`` the Python load
generator is used (it measures time to first byte). Prints requests/s, p50/p99 latency
and p50 time to first byte per path (medians over rounds), the ext_proc process's CPU per
request and per ext_proc message (Envoy's own count), and the ratios.

    python -m benchmarks.overhead [--rounds 3] [--seconds 10] [--concurrency 16] [--stream]

With ``--profile DIR`` each ext_proc process is first sampled with py-spy under the same
load (one extra pass per path, not counted in the figures); DIR gets py-spy's collapsed
stacks per path and PROFILE-RUN.md, the top frames by self time (benchmarks/overhead/profile.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from benchmarks.overhead import profile
from epp.devstack.envoy import envoy_binary, fast_bootstrap_path, render_bootstrap, repo_bootstrap_path
from epp.devstack.processes import ManagedProcess, free_port, wait_for_http
from epp.devstack.stack import Stack

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def direct_bootstrap(listen: int, admin: int, sims: list[int], lb_policy: str = "ROUND_ROBIN") -> str:
    doc = yaml.safe_load(render_bootstrap(repo_bootstrap_path(), listen, admin, 1))
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"]
    hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "sims"
    doc["static_resources"]["clusters"].append({
        "name": "sims", "type": "STATIC", "lb_policy": lb_policy, "connect_timeout": "5s",
        "load_assignment": {"cluster_name": "sims", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
            for p in sims]}]},
    })
    return yaml.safe_dump(doc, sort_keys=False)


def start_envoy(workdir: Path, name: str, bootstrap: str, admin: int) -> ManagedProcess:
    path = workdir / f"envoy-{name}.yaml"
    path.write_text(bootstrap)
    envoy = ManagedProcess(f"envoy-{name}", [envoy_binary(), "-c", str(path), "--concurrency", "1",
                                             "--base-id", str(admin), "--log-level", "error"],
                           workdir / f"envoy-{name}.log").start()
    wait_for_http(f"http://127.0.0.1:{admin}/ready", 30, envoy)
    return envoy


_WRK_LATENCY = re.compile(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def process_cpu(pid: int | None) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, body: bytes, concurrency: int, seconds: float, workdir: Path) -> dict[str, float]:
    script = workdir / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {json.dumps(body.decode())}\n")
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    latency = {q: float(v) * _UNIT[u] for q, v, u in _WRK_LATENCY.findall(out)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "p50": latency["50"], "p99": latency["99"], "errors": float(errors.group(1)) if errors else 0.0}


def run_python(url: str, body: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.loadgen", url, "--body", body.decode(),
                          "--concurrency", str(concurrency), "--requests", "1000000", "--seconds", str(seconds)],
                         capture_output=True, text=True, timeout=seconds + 120, check=True).stdout
    summary = json.loads(out)
    return {"rps": summary["rps"], "p50": summary["p50"], "p99": summary["p99"], "errors": summary["errors"],
            "ttfb_p50": summary["ttft_p50"] if summary["ttft_p50"] is not None else float("nan")}


def extproc_messages(admin: int) -> int:
    """Messages Envoy sent to ext_proc servers so far (every ext_proc filter, routing and observe)."""
    url = f"http://127.0.0.1:{admin}/stats?filter=ext_proc.*stream_msgs_sent$"
    with urllib.request.urlopen(url, timeout=10) as response:
        lines = response.read().decode().splitlines()
    return sum(int(line.rsplit(":", 1)[1]) for line in lines if ":" in line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--stream", action="store_true", help="SSE responses (every token passes through ext_proc)")
    parser.add_argument("--sim-time-scale", type=float, default=0.001,
                        help="the simulators' pace (1 = real time); larger spreads a stream over more chunks")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="sample each ext_proc process with py-spy first")
    parser.add_argument("--profile-native", action="store_true", help="py-spy --native (C and Cython frames too)")
    parser.add_argument("--profile-perf", action="store_true", help="also Linux perf, CPU split by library")
    args = parser.parse_args(argv)
    # wrk cannot time the first byte; a streamed run is about exactly that.
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and not args.stream and shutil.which("wrk"))
    body = json.dumps({"model": MODEL, "prompt": "Benchmark the gateway overhead, please.",
                       "max_tokens": args.max_tokens, "stream": args.stream}).encode()
    workdir = Path(tempfile.mkdtemp(prefix="epp-overhead-"))
    stack = Stack(workdir, args.replicas, sim_args=["--time-scale", str(args.sim_time_scale)],
                  picker_args=["--log-level", "warning"])
    processes: list[ManagedProcess] = []
    try:
        stack.start_sims()
        stack.start_picker()
        endpoints = ",".join(stack.sim_hostport(i) for i in range(args.replicas))
        noop_port = free_port()
        noop = ManagedProcess("noop", [sys.executable, "-m", "benchmarks.overhead.noop_extproc", "--port",
                                       str(noop_port), "--endpoints", endpoints], workdir / "noop.log").start()
        processes.append(noop)
        noop.wait_for_line("noop ext_proc ready")
        urls, admins = {}, {}
        for name, bootstrap_for in (
            ("direct", lambda listen, admin: direct_bootstrap(listen, admin, stack.ports.sims)),
            ("noop", lambda listen, admin: render_bootstrap(repo_bootstrap_path(), listen, admin, noop_port)),
            ("picker", lambda listen, admin: render_bootstrap(repo_bootstrap_path(), listen, admin, stack.ports.grpc)),
            ("fast", lambda listen, admin: render_bootstrap(fast_bootstrap_path(), listen, admin, stack.ports.grpc)),
        ):
            listen, admin = free_port(), free_port()
            processes.append(start_envoy(workdir, name, bootstrap_for(listen, admin), admin))
            urls[name] = f"http://127.0.0.1:{listen}/v1/completions"
            admins[name] = admin
        results: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
        for url in urls.values():  # warm-up: connections and allocator
            run_python(url, body, 4, 2.0)
        # CPU seconds of each path's ext_proc process, to report CPU per request.
        picker_pid = stack.picker.pid  # type: ignore[union-attr]
        extproc_pid = {"direct": None, "noop": noop.pid, "picker": picker_pid, "fast": picker_pid}
        if args.profile:
            profile_paths(args, urls, extproc_pid, body, bool(use_wrk), workdir)
            if args.rounds == 0:
                return 0
        for round_no in range(args.rounds):
            for name, url in urls.items():
                cpu_before = process_cpu(extproc_pid[name])
                messages_before = extproc_messages(admins[name])
                measured = run_wrk(url, body, args.concurrency, args.seconds, workdir) if use_wrk \
                    else run_python(url, body, args.concurrency, args.seconds)
                cpu = process_cpu(extproc_pid[name]) - cpu_before
                messages = extproc_messages(admins[name]) - messages_before
                requests = measured["rps"] * args.seconds
                measured["cpu_us"] = cpu / requests * 1e6 if extproc_pid[name] and requests else 0.0
                measured["messages_per_request"] = messages / requests if requests else 0.0
                measured["cpu_us_per_message"] = cpu / messages * 1e6 if extproc_pid[name] and messages else 0.0
                measured.setdefault("ttfb_p50", float("nan"))
                results[name].append(measured)
                print(f"round {round_no + 1} {name:>6}: {measured['rps']:8.0f} req/s"
                      f"  p50 {measured['p50'] * 1e3:6.2f} ms  p99 {measured['p99'] * 1e3:6.2f} ms"
                      f"  TTFB p50 {measured['ttfb_p50'] * 1e3:6.2f} ms"
                      f"  ext_proc CPU {measured['cpu_us']:6.0f} us/req"
                      f" ({measured['messages_per_request']:.1f} msgs/req)"
                      f"  errors {measured['errors']:.0f}", flush=True)
        report = summarize(results)
        report["load"] = {"generator": "wrk" if use_wrk else "python", "concurrency": args.concurrency,
                          "seconds": args.seconds, "rounds": args.rounds, "stream": args.stream,
                          "max_tokens": args.max_tokens, "replicas": args.replicas,
                          "sim_time_scale": args.sim_time_scale}
        print_report(report)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        return 0
    finally:
        for process in processes:
            process.stop()
        stack.stop()


def profile_paths(args: argparse.Namespace, urls: dict[str, str], pids: dict[str, int | None], body: bytes,
                  use_wrk: bool, workdir: Path) -> None:
    """One py-spy pass per ext_proc path under the benchmark's load; writes DIR/PROFILE-RUN.md."""
    args.profile.mkdir(parents=True, exist_ok=True)
    sections = []
    for name, url in urls.items():
        pid = pids[name]
        if pid is None:
            continue
        stacks = args.profile / f"{name}.txt"
        perf_data = args.profile / f"{name}.perf.data"
        spy = profile.record_perf(pid, args.seconds, perf_data) if args.profile_perf \
            else profile.record(pid, args.seconds, stacks, native=args.profile_native)
        if use_wrk:
            run_wrk(url, body, args.concurrency, args.seconds, workdir)
        else:
            run_python(url, body, args.concurrency, args.seconds)
        spy.wait(timeout=args.seconds + 60)
        if args.profile_perf:
            sections.append(f"## {name}\n\n{profile.perf_by_library(perf_data)}")
        else:
            sections.append(f"## {name}\n\n{profile.report(stacks.read_text()) if stacks.exists() else '(no output)'}")
    (args.profile / "PROFILE-RUN.md").write_text("\n".join(sections))
    print(f"profiles written to {args.profile}", flush=True)


def summarize(results: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    keys = ("rps", "p50", "p99", "errors", "cpu_us", "ttfb_p50", "messages_per_request", "cpu_us_per_message")
    med = {name: {k: statistics.median(r[k] for r in runs) for k in keys} for name, runs in results.items()}
    ratios = {
        "picker/noop throughput": med["picker"]["rps"] / med["noop"]["rps"],
        "picker/direct throughput": med["picker"]["rps"] / med["direct"]["rps"],
        "noop/direct throughput": med["noop"]["rps"] / med["direct"]["rps"],
        "picker-noop p50 ms": (med["picker"]["p50"] - med["noop"]["p50"]) * 1e3,
        "picker/noop ext_proc CPU per request": med["picker"]["cpu_us"] / med["noop"]["cpu_us"],
        # Per-round ratios show the spread the medians hide.
        "picker/noop per round": [p["rps"] / n["rps"] for p, n in zip(results["picker"], results["noop"], strict=True)],
        # Standard (GIE single filter) against fast (responses observed): what the gateway adds
        # over Envoy routing directly, first byte and whole response, and the picker's CPU.
        "picker-direct TTFB p50 ms": (med["picker"]["ttfb_p50"] - med["direct"]["ttfb_p50"]) * 1e3,
        "fast-direct TTFB p50 ms": (med["fast"]["ttfb_p50"] - med["direct"]["ttfb_p50"]) * 1e3,
        "picker-direct p50 ms": (med["picker"]["p50"] - med["direct"]["p50"]) * 1e3,
        "fast-direct p50 ms": (med["fast"]["p50"] - med["direct"]["p50"]) * 1e3,
        "fast/picker p50": med["fast"]["p50"] / med["picker"]["p50"],
        "fast/picker throughput": med["fast"]["rps"] / med["picker"]["rps"],
        "fast/picker ext_proc CPU per request": med["fast"]["cpu_us"] / med["picker"]["cpu_us"],
        "fast/picker per round": [f["p50"] / p["p50"] for f, p in zip(results["fast"], results["picker"], strict=True)],
    }
    return {"medians": med, "ratios": ratios}


def print_report(report: dict[str, Any]) -> None:
    print("\nmedians over rounds:")
    print(f"{'path':>8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'TTFB p50':>9} {'ext_proc CPU us/req':>20}"
          f" {'msgs/req':>9} {'us/msg':>7}")
    for name, m in report["medians"].items():
        print(f"{name:>8} {m['rps']:9.0f} {m['p50'] * 1e3:8.2f} {m['p99'] * 1e3:8.2f} {m['ttfb_p50'] * 1e3:9.2f}"
              f" {m['cpu_us']:20.0f} {m['messages_per_request']:9.1f} {m['cpu_us_per_message']:7.1f}")
    r = report["ratios"]
    print(f"\npicker/noop throughput  {r['picker/noop throughput']:.3f}  (per round: "
          + ", ".join(f"{x:.3f}" for x in r["picker/noop per round"]) + ")")
    print(f"picker/direct throughput {r['picker/direct throughput']:.3f}")
    print(f"noop/direct throughput   {r['noop/direct throughput']:.3f}")
    print(f"picker p50 - noop p50    {r['picker-noop p50 ms']:+.2f} ms")
    print(f"picker/noop ext_proc CPU per request {r['picker/noop ext_proc CPU per request']:.2f}")
    print(f"added over direct, TTFB p50:  standard {r['picker-direct TTFB p50 ms']:+.2f} ms"
          f"  fast {r['fast-direct TTFB p50 ms']:+.2f} ms")
    print(f"added over direct, p50:       standard {r['picker-direct p50 ms']:+.2f} ms"
          f"  fast {r['fast-direct p50 ms']:+.2f} ms")
    print(f"fast/standard p50 {r['fast/picker p50']:.3f} (per round: "
          + ", ".join(f"{x:.3f}" for x in r["fast/picker per round"]) + ")"
          f"  throughput {r['fast/picker throughput']:.3f}"
          f"  picker CPU per request {r['fast/picker ext_proc CPU per request']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
