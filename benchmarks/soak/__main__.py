"""Soak: N mixed requests through real Envoy; does the picker give back what it took?

A fresh stack (``--replicas`` simulators serving three model names, the picker, Envoy)
receives ``--requests`` requests from ``--concurrency`` closed-loop workers: valid chat
requests (some streaming), headers-only requests, unknown and 10 KB model names, malformed
JSON and clients that go away mid-stream (``mix.py``), each with a unique request id. From
halfway through, for a tenth of the run, one simulator answers every inference request with
a 500 (fault mode ``error``).

Reported: the picker's RSS after warm-up and at the end (and along the way), the size of
every per-key structure it exposes (metric label sets per family, prefix index, decision
log, and ``/debug/state`` when served), what is still held once traffic stops (running
gauge, dispatch estimates), and answers by request kind and status. The aim: RSS growth
under 10% after warm-up, and nothing held at the end. The default config
(``config.yaml`` here) caps the prefix index so that it is full after the warm-up.

    python -m benchmarks.soak [--requests 100000] [--concurrency 32] [--max-seconds 1800]
        [--seed 1] [--json FILE] [--config EndpointPickerConfig.yaml]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.soak.mix import MODELS, Planned, plan
from benchmarks.soak.probe import Snapshot, rss_kib, wait_idle
from epp.devstack.stack import Stack

DEFAULT_CONFIG = Path(__file__).with_name("config.yaml")
SIM_ARGS = ["--max-num-seqs", "32", "--time-scale", "0.02", "--served-model-name", *MODELS]
REQUEST_TIMEOUT = 30.0


async def send(session: aiohttp.ClientSession, url: str, request: Planned) -> str:
    """One request; returns its outcome as ``<status>`` or an exception name."""
    try:
        async with session.request(request.method, url + request.path, data=request.body,
                                   headers=request.headers) as response:
            if request.kind.value == "client-abort":
                await response.content.readany()  # the stream has started ...
                response.close()  # ... and the client goes away
                return f"{response.status} aborted"
            await response.read()
            return str(response.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__


class Run:
    def __init__(self, stack: Stack, args: argparse.Namespace) -> None:
        self.stack = stack
        self.args = args
        self.rng = random.Random(args.seed)
        self.run_id = f"{args.seed}-{int(time.time())}"
        self.next = 0
        self.done = 0
        self.answers: Counter[tuple[str, str]] = Counter()
        self.unexpected: Counter[tuple[str, str]] = Counter()
        self.rss_trace: list[tuple[int, int]] = []
        self.fault_window = (args.requests // 2, args.requests // 2 + args.requests // 10)
        self.deadline = time.monotonic() + args.max_seconds

    @property
    def picker_pid(self) -> int:
        assert self.stack.picker is not None
        return self.stack.picker.pid

    async def set_fault(self, mode: str) -> None:
        url = f"http://{self.stack.sim_hostport(1)}/sim/fault"
        async with aiohttp.ClientSession() as session, session.post(url, json={"mode": mode}) as response:
            response.raise_for_status()

    async def worker(self, session: aiohttp.ClientSession, limit: int) -> None:
        while self.next < limit and time.monotonic() < self.deadline:
            index = self.next
            self.next += 1
            if index == self.fault_window[0]:
                await self.set_fault("error")
            elif index == self.fault_window[1]:
                await self.set_fault("ok")
            request = plan(index, self.run_id, self.rng)
            outcome = await send(session, self.stack.url, request)
            self.answers[(request.kind.value, outcome)] += 1
            status = outcome.split()[0]
            # Requests already in flight when the fault starts or ends may see it too.
            margin = self.args.concurrency
            in_fault = self.fault_window[0] - margin <= index < self.fault_window[1] + margin
            if not (status.isdigit() and request.expected(int(status))) and not (in_fault and status == "500"):
                self.unexpected[(request.kind.value, outcome)] += 1
            self.done += 1
            if self.done % max(1, self.args.requests // 10) == 0:
                self.rss_trace.append((self.done, rss_kib(self.picker_pid)))

    async def phase(self, limit: int) -> None:
        connector = aiohttp.TCPConnector(limit=self.args.concurrency)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(self.worker(session, limit) for _ in range(self.args.concurrency)))

    async def main(self) -> dict[str, Any]:
        warmup = min(self.args.warmup, self.args.requests // 2)
        started = time.monotonic()
        await self.phase(warmup)
        # RSS is compared right after each phase, before the admin probes: a /metrics page with
        # a thousand label sets per family is megabytes, and rendering it moves RSS on its own
        # (the RSS seen while probing is reported apart).
        rss_start = rss_kib(self.picker_pid)
        start, _ = await wait_idle(self.stack.admin_url, self.picker_pid)
        await self.phase(self.args.requests)
        rss_end = rss_kib(self.picker_pid)
        await self.set_fault("ok")  # in case the run stopped inside the fault window
        end, idle_polls = await wait_idle(self.stack.admin_url, self.picker_pid)
        return self.report((rss_start, rss_end), start, end, idle_polls, time.monotonic() - started)

    def report(self, rss: tuple[int, int], start: Snapshot, end: Snapshot, idle_polls: list[tuple[float, Any]],
               seconds: float) -> dict[str, Any]:
        growth = (rss[1] - rss[0]) / rss[0]
        families = sorted(set(start.label_sets) | set(end.label_sets))
        return {
            "requests": self.done, "seconds": round(seconds, 1), "requests_per_s": round(self.done / seconds, 1),
            "rss_kib": {"after_warmup": rss[0], "end": rss[1], "growth_pct": round(100 * growth, 2),
                        "trace": self.rss_trace, "after_admin_probes": [start.rss_kib, end.rss_kib]},
            "sizes": {"after_warmup": start.sizes(), "end": end.sizes()},
            "label_sets_per_family": {f: [start.label_sets.get(f, 0), end.label_sets.get(f, 0)] for f in families},
            "held_at_end": {"running_gauge": end.running, "estimated_waiting": end.estimated_waiting,
                            "polls_until_idle": idle_polls},
            "answers": {f"{kind} -> {outcome}": n for (kind, outcome), n in sorted(self.answers.items())},
            "unexpected": {f"{kind} -> {outcome}": n for (kind, outcome), n in sorted(self.unexpected.items())},
            "aim_met": growth < 0.10 and not end.running and not end.estimated_waiting,
        }


def print_report(report: dict[str, Any]) -> None:
    rss = report["rss_kib"]
    print(f"\n{report['requests']} requests in {report['seconds']} s ({report['requests_per_s']} req/s)")
    print(f"picker RSS: {rss['after_warmup']} KiB after warm-up -> {rss['end']} KiB at the end "
          f"({rss['growth_pct']:+.2f}%); along the way: {rss['trace']}")
    print(f"picker RSS while serving the admin probes (/metrics etc.): {rss['after_admin_probes'][0]} KiB after "
          f"warm-up, {rss['after_admin_probes'][1]} KiB at the end")
    print("per-key structures (after warm-up -> end):")
    for name, value in report["sizes"]["end"].items():
        print(f"  {name:40s} {report['sizes']['after_warmup'].get(name)} -> {value}")
    print("metric label sets per family (after warm-up -> end):")
    for family, (before, after) in report["label_sets_per_family"].items():
        print(f"  {family:60s} {before:6d} -> {after:6d}")
    held = report["held_at_end"]
    print(f"held at the end: running gauge {held['running_gauge'] or 0}, dispatch estimates "
          f"{held['estimated_waiting'] or 0}; polls (seconds, held): {held['polls_until_idle']}")
    print("answers by kind:")
    for what, n in report["answers"].items():
        print(f"  {what:40s} {n:7d}")
    print(f"unexpected answers: {report['unexpected'] or 'none'}")
    print(f"aim (RSS growth < 10%, nothing held): {'met' if report['aim_met'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=30_000,
                        help="requests before the start figures (at most N/2)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="stop sending after this long")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="EndpointPickerConfig for the picker (default: benchmarks/soak/config.yaml, the "
                             "default profile with a prefix index that fills during the warm-up)")
    parser.add_argument("--workdir", type=Path, help="keep the stack's logs here (default: a temporary directory)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="epp-soak-"))
    config = args.config.read_text()
    with Stack(workdir, args.replicas, sim_args=SIM_ARGS, picker_args=["--log-level", "warning"],
               config_text=config) as stack:
        report = asyncio.run(Run(stack, args).main())
    print_report(report)
    print(f"logs: {workdir}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["aim_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
