"""Routing quality: time to first token and throughput by router, on simulated vLLM servers.

For each workload and router, a fresh stack (``--replicas`` simulators, Envoy, and the picker
when the router is one) receives the same open-loop request stream (Poisson arrivals at
``--rate``), streaming with usage. Reported per router: TTFT p50/p90, output tokens/s,
prefix-cache hit rate (cached / prompt tokens, from the simulators' usage), errors, and how
requests spread over replicas; then ratios against round-robin measured in the same run.

Routers (see routers.py): round-robin, envoy-least-request, envoy-random (Envoy alone),
load-only (GIE queue + KV), gie-default (GIE's exact default), default (the built-in
profile), default+lora, precise (precise-prefix-cache-scorer on the simulators' KV events;
when it runs, every router's simulators tokenize with the same tiny tokenizer, see precise.py).
precise+approx (with the approximate scorer beside it; precise-only = precise), precise-wholeprompt (chunk
caching of prompt token ids off: every prompt encoded whole, as before it existed). Any picker router with
``-2pickers`` appended runs two picker processes behind one Envoy, balanced round robin
(pickers.py), compared with ``default-2pickers``.
For runs with ``precise`` the picker's CPU, RSS, KV events and blocks indexed are reported too.

Eviction-heavy comparison (``make bench-routing-precise``):

    python -m benchmarks.routing --workloads eviction-heavy,shared-prefix --routers default,precise

Two pickers, each seeing half of the routing decisions:

    python -m benchmarks.routing --workloads eviction-heavy,shared-prefix \
        --routers default-2pickers,precise-2pickers,precise-only-2pickers

    python -m benchmarks.routing [--workloads shared-prefix,no-prefix,lora,hot-prefix]
        [--routers round-robin,load-only,default] [--rate 16] [--seconds 30] [--replicas 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.loadgen import Outcome, percentile, run_open_loop
from benchmarks.overhead.__main__ import direct_bootstrap, start_envoy
from benchmarks.routing.pickers import MultiPickerStack, connect_mode, split_router
from benchmarks.routing.precise import KV_EVENT_ROUTERS, PickerProbe, precise_config, precise_sim_args, write_tokenizer
from benchmarks.routing.routers import ENVOY_POLICIES, ROUTERS
from benchmarks.routing.workloads import Workload, build
from epp.devstack.processes import ManagedProcess, free_port
from epp.devstack.stack import Stack


def run_one(workload: Workload, router: str, replicas: int, rate: float, seconds: float, workdir: Path,
            tokenizer: Path | None = None, before_stop: Callable[[Stack], None] | None = None) -> list[Outcome]:
    router, pickers = split_router(router)
    config = ROUTERS[router]
    sim_args: Sequence[str] = workload.sim_args
    if tokenizer is not None:
        sim_args = [*sim_args, "--tokenizer", str(tokenizer)]
    if router in KV_EVENT_ROUTERS:
        assert tokenizer is not None, "the precise router needs a tokenizer"
        events = free_port()
        config = precise_config(tokenizer, events, approximate=router == "precise+approx",
                                chunk_cache=router != "precise-wholeprompt")
        if pickers == 1:
            sim_args = [*sim_args, *precise_sim_args(events)]
        else:
            config = connect_mode(config)
    stack: Stack
    if pickers > 1:
        assert config is not None, f"{router} is Envoy alone: nothing to scale out"
        stack = MultiPickerStack(workdir, replicas, pickers, kv_events=router in KV_EVENT_ROUTERS,
                                 sim_args=sim_args, config_text=config or None,
                                 picker_args=["--log-level", "warning"])
    else:
        stack = Stack(workdir, replicas, sim_args=sim_args, config_text=config or None,
                      picker_args=["--log-level", "warning"])
    extra: list[ManagedProcess] = []
    try:
        stack.start_sims()
        if config is None:
            listen, admin = free_port(), free_port()
            bootstrap = direct_bootstrap(listen, admin, stack.ports.sims, ENVOY_POLICIES[router])
            extra.append(start_envoy(workdir, router, bootstrap, admin))
            url = f"http://127.0.0.1:{listen}"
        else:
            stack.start_picker()
            stack.start_envoy()
            url = stack.url
        outcomes, _ = asyncio.run(run_open_loop(url + workload.path, workload.requests, rate, seconds * 3))
        if before_stop is not None:
            before_stop(stack)
        return outcomes
    finally:
        for process in extra:
            process.stop()
        stack.stop()


def summarize(outcomes: list[Outcome], seconds: float) -> dict[str, Any]:
    ok = [o for o in outcomes if o.status == 200]
    ttft = [o.ttft for o in ok if o.ttft is not None]
    prompt = sum(o.prompt_tokens for o in ok)
    spread = Counter(o.upstream for o in ok)
    # Throughput over the makespan: first request sent to last response finished.
    makespan = (max(o.sent_at + o.latency for o in ok) - min(o.sent_at for o in ok)) if ok else seconds
    return {
        "requests": len(outcomes), "errors": len(outcomes) - len(ok),
        "ttft_p50_ms": percentile(ttft, 50) * 1e3 if ttft else None,
        "ttft_p90_ms": percentile(ttft, 90) * 1e3 if ttft else None,
        "ttft_p99_ms": percentile(ttft, 99) * 1e3 if ttft else None,
        "output_tokens_per_s": sum(o.output_tokens for o in ok) / makespan,
        "hit_rate": sum(o.cached_tokens for o in ok) / prompt if prompt else 0.0,
        # Requests served mostly cold (under half the prompt cached): while more than 10% are,
        # p90 TTFT is one cold prefill whatever the router, so this and the mean show the rest.
        "cold_share": sum(o.cached_tokens * 2 < o.prompt_tokens for o in ok) / len(ok) if ok else 0.0,
        "ttft_mean_ms": sum(ttft) / len(ttft) * 1e3 if ttft else None,
        "spread": sorted(spread.values(), reverse=True),
    }


def print_table(name: str, description: str, results: dict[str, dict[str, Any]]) -> None:
    print(f"\n== {name}: {description}")
    print(f"{'router':>21} {'TTFT p50':>10} {'TTFT p90':>10} {'TTFT p99':>10} {'mean':>10} {'out tok/s':>10}"
          f" {'hit rate':>9} {'cold':>6} {'errors':>7}  requests per replica")
    for router, r in results.items():
        def ms(v: float | None) -> str:
            return f"{v:8.0f}ms" if v is not None else "       n/a"
        print(f"{router:>21} {ms(r['ttft_p50_ms'])} {ms(r['ttft_p90_ms'])} {ms(r['ttft_p99_ms'])} "
              f"{ms(r['ttft_mean_ms'])} {r['output_tokens_per_s']:10.0f} {r['hit_rate']:9.2f} {r['cold_share']:6.2f}"
              f" {r['errors']:7d}  {r['spread']}")
    base = results.get("round-robin")
    if base and base["ttft_p90_ms"]:
        for router, r in results.items():
            if router != "round-robin" and r["ttft_p90_ms"]:
                print(f"{router:>21}: p90 TTFT {base['ttft_p90_ms'] / r['ttft_p90_ms']:5.2f}x lower than round-robin,"
                      f" throughput {r['output_tokens_per_s'] / base['output_tokens_per_s']:5.2f}x")


def print_precise(results: dict[str, dict[str, Any]]) -> None:
    """The precise router against the approximate default of the same run, and what it cost the picker."""
    for router, r in results.items():
        if "picker" in r:
            u = r["picker"]
            prepare = u.get("prepareMicrosPerRequest")
            print(f"{router:>21}: picker CPU {u['cpuSeconds']:6.2f}s, RSS {u['rssBytes'] / 2**20:6.1f} MiB, "
                  f"KV events {u['kvEvents']}, blocks indexed {u['kvBlocks']}"
                  + (f", precise PrepareData {prepare:.0f} us per request" if prepare is not None else ""))
    for name, precise in results.items():
        kind, pickers = split_router(name)
        # Against the approximate default with as many pickers.
        base = results.get("default" if pickers == 1 else f"default-{pickers}pickers")
        if kind not in KV_EVENT_ROUTERS or not (base and base["ttft_p90_ms"] and precise["ttft_p90_ms"]):
            continue
        print(f"{name:>21}: p90 TTFT {precise['ttft_p90_ms'] / base['ttft_p90_ms']:5.2f}x the default's, throughput "
              f"{precise['output_tokens_per_s'] / base['output_tokens_per_s']:5.2f}x, hit rate "
              f"{precise['hit_rate']:.2f} vs {base['hit_rate']:.2f}")
        bp, pp = base.get("picker"), precise.get("picker")
        if bp and pp and pp["kvEvents"]:
            extra = pp["cpuSeconds"] - bp["cpuSeconds"]
            print(f"{name:>21}: extra picker CPU {extra:.2f}s = {extra / pp['kvEvents'] * 1e6:.1f} ms per 1,000 "
                  f"events (incl. tokenizing requests); extra RSS {(pp['rssBytes'] - bp['rssBytes']) / 2**20:.1f} MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="shared-prefix,no-prefix,lora,hot-prefix")
    parser.add_argument("--routers", default="round-robin,load-only,gie-default,default,default+lora")
    parser.add_argument("--rate", type=float, default=16.0, help="requests per second (open loop)")
    parser.add_argument("--seconds", type=float, default=30.0, help="arrival window per run")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write results here")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"rate": args.rate, "seconds": args.seconds, "replicas": args.replicas, "workloads": {}}
    routers = args.routers.split(",")
    shared = tempfile.TemporaryDirectory(prefix="epp-routing-tokenizer-")
    tokenizer = write_tokenizer(Path(shared.name)) if KV_EVENT_ROUTERS & {split_router(r)[0] for r in routers} \
        else None
    for name in args.workloads.split(","):
        workload = build(name, args.rate, args.seconds, args.seed)
        results = {}
        for router in routers:
            probe = PickerProbe()
            with tempfile.TemporaryDirectory(prefix=f"epp-routing-{name}-{router}-") as workdir:
                outcomes = run_one(workload, router, args.replicas, args.rate, args.seconds, Path(workdir),
                                   tokenizer, probe)
            results[router] = summarize(outcomes, args.seconds)
            if tokenizer is not None and probe.usage is not None:
                results[router]["picker"] = probe.usage.as_dict()
            print(f"{name:>21} {router:>21}: done ({results[router]['requests']} requests)", flush=True)
        report["workloads"][name] = {"description": workload.description, "results": results}
        print_table(name, workload.description, results)
        if tokenizer is not None:
            print_precise(results)
    shared.cleanup()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
