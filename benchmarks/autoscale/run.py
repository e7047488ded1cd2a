"""Autoscaler benchmark: a load ramp up, a steady plateau, a ramp down, on simulated replicas.

The benchmark plays the HPA: a pool of ``--max-replicas`` simulators is started, of which
the first ``active`` take traffic (join-shortest-queue over the client's own in-flight
counts). Every ``--interval`` the ``epp autoscale`` service (in process, the real
``AutoscaleService`` over a ``PodScrapeSource`` of the active replicas) analyzes them, and
the active count is set to its recommendation (1..max) at once.

A probe applies the same rules every ``--probe`` seconds (much faster than the interval) to
find when the pool *became* saturated, so the report can say how long the recommendation
took to rise. Reported:

- ``rise_seconds``: from the first probe that saw the pool saturated to the first higher
  recommendation (aim: within two intervals);
- ``steady_changes``: recommendation changes in the settled second half of the plateau,
  and ``steady_reversals``: up-then-down or down-then-up turns over the whole plateau
  (aim: 0);
- ``dropped_only_after_load_fell``: no recommendation went down before the ramp down began.

Writes ``autoscale.json`` and ``autoscale.png`` (matplotlib, the ``bench`` extra) to ``--out``.
``python -m benchmarks.autoscale.run`` (about 50 s with the defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from epp.autoscale import queries as q
from epp.autoscale.analyzer import Direction, ModelReadings, Thresholds, analyze
from epp.autoscale.metrics import AutoscaleMetrics, Variant
from epp.autoscale.overrides import OverridesFile
from epp.autoscale.podscrape import PodScrapeSource
from epp.autoscale.service import AutoscaleService, ModelTarget, QueryNames, ReadingsReader, source_reader
from epp.sim import SimConfig, SimServer

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
NAMES = QueryNames(q.KV_CACHE_USAGE, q.QUEUE_LENGTH, q.RUNNING_REQUESTS, None)


@dataclass(frozen=True)
class Profile:
    """Client concurrency over time: low, ramp up, plateau, ramp down, low."""

    low: int
    high: int
    warmup: float
    ramp: float
    plateau: float
    cooldown: float

    @property
    def plateau_start(self) -> float:
        return self.warmup + self.ramp

    @property
    def ramp_down_start(self) -> float:
        return self.plateau_start + self.plateau

    @property
    def total(self) -> float:
        return self.ramp_down_start + self.ramp + self.cooldown

    def concurrency(self, t: float) -> int:
        if t < self.warmup:
            return self.low
        if t < self.plateau_start:
            return round(self.low + (self.high - self.low) * (t - self.warmup) / self.ramp)
        if t < self.ramp_down_start:
            return self.high
        if t < self.ramp_down_start + self.ramp:
            return round(self.high - (self.high - self.low) * (t - self.ramp_down_start) / self.ramp)
        return self.low


@dataclass
class Tick:
    t: float
    load: int
    active: int
    desired: int | None
    direction: str
    reason: str


class Pool:
    """The simulators, which of them take traffic, and the client's in-flight count per replica."""

    def __init__(self, sims: list[SimServer]) -> None:
        self.sims = sims
        self.active = 1
        self.inflight = [0] * len(sims)

    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sims[:self.active]]

    def pick(self) -> int:
        return min(range(self.active), key=lambda i: self.inflight[i])


def active_reader(pool: Pool) -> ReadingsReader:
    """Reads the replicas active right now (the set changes as the benchmark scales)."""
    async def read(models: Sequence[str]) -> Mapping[str, ModelReadings]:
        async with PodScrapeSource(pool.endpoints(), q.pod_queries(), timeout=2.0) as source:
            inner = source_reader(source, NAMES, params=q.query_params, replicas=source.endpoints)
            return await inner(models)
    return read


async def worker(index: int, pool: Pool, session: aiohttp.ClientSession, want: list[int], stop: asyncio.Event,
                 rng: random.Random, max_tokens: int) -> None:
    while not stop.is_set() and index < want[0]:
        i = pool.pick()
        pool.inflight[i] += 1
        body = {"model": MODEL, "prompt": "summarize the report", "max_tokens": rng.randint(max_tokens // 2,
                                                                                             max_tokens)}
        try:
            async with session.post(f"{pool.sims[i].url}/v1/completions", json=body) as response:
                await response.read()
        except aiohttp.ClientError:
            await asyncio.sleep(0.05)
        finally:
            pool.inflight[i] -= 1


async def drive(profile: Profile, pool: Pool, session: aiohttp.ClientSession, stop: asyncio.Event,
                start: float, seed: int, max_tokens: int) -> None:
    """Keeps the number of workers at the profile's concurrency (workers above it finish and leave)."""
    want = [0]
    workers: dict[int, asyncio.Task[None]] = {}
    rng = random.Random(seed)
    while not stop.is_set():
        want[0] = profile.concurrency(time.monotonic() - start)
        for index in range(want[0]):
            task = workers.get(index)
            if task is None or task.done():
                workers[index] = asyncio.create_task(worker(index, pool, session, want, stop, rng, max_tokens))
        await asyncio.sleep(0.05)
    for task in workers.values():
        task.cancel()
    await asyncio.gather(*workers.values(), return_exceptions=True)


async def probe(pool: Pool, every: float, stop: asyncio.Event, start: float, saturated_at: list[float]) -> None:
    """The first moment the rules, run often, see the active pool needing more replicas."""
    read = active_reader(pool)
    while not stop.is_set():
        readings = (await read([MODEL])).get(MODEL)
        if readings is not None and analyze(readings, Thresholds()).direction is Direction.UP:
            saturated_at.append(time.monotonic() - start)
        await asyncio.sleep(every)


async def run(args: argparse.Namespace) -> dict[str, object]:
    profile = Profile(args.low, args.high, args.warmup, args.ramp, args.plateau, args.cooldown)
    sims = [SimServer(SimConfig(port=0, max_num_seqs=args.max_num_seqs, time_scale=args.time_scale, seed=i))
            for i in range(args.max_replicas)]
    for sim in sims:
        await sim.start()
    pool = Pool(sims)
    service = AutoscaleService(active_reader(pool), [ModelTarget(MODEL, Variant(MODEL, "bench", "sim"))],
                               OverridesFile(None), AutoscaleMetrics(), interval=args.interval)
    ticks: list[Tick] = []
    saturated_at: list[float] = []
    stop = asyncio.Event()
    start = time.monotonic()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            load = asyncio.create_task(drive(profile, pool, session, stop, start, args.seed, args.max_tokens))
            prober = asyncio.create_task(probe(pool, args.probe, stop, start, saturated_at))
            while (now := time.monotonic() - start) < profile.total:
                (rec,) = await service.analyze_once()
                ticks.append(Tick(round(now, 3), profile.concurrency(now), pool.active, rec.desired,
                                  rec.analysis.direction.value, rec.analysis.reason))
                if rec.desired is not None:
                    pool.active = max(1, min(len(sims), rec.desired))
                await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - start - now)))
            stop.set()
            await asyncio.gather(load, prober, return_exceptions=True)
    finally:
        for sim in sims:
            with contextlib.suppress(Exception):
                await sim.stop()
    return summarize(profile, ticks, saturated_at, args)


def summarize(profile: Profile, ticks: list[Tick], saturated_at: list[float],
              args: argparse.Namespace) -> dict[str, object]:
    desired = [(t.t, t.desired) for t in ticks if t.desired is not None]
    changes = [(t1, d0, d1) for (_, d0), (t1, d1) in zip(desired, desired[1:], strict=False) if d1 != d0]
    first_sat = next((s for s in saturated_at if s >= profile.warmup), None)
    first_rise = next((t for t, d0, d1 in changes if d1 > d0 and first_sat is not None and t >= first_sat), None)
    rise = None if first_sat is None or first_rise is None else round(first_rise - first_sat, 2)
    settled = profile.plateau_start + profile.plateau / 2
    steady_changes = sum(1 for t, _, _ in changes if settled <= t < profile.ramp_down_start)
    on_plateau = [(d0, d1) for t, d0, d1 in changes if profile.plateau_start <= t < profile.ramp_down_start]
    plateau_dirs = [1 if d1 > d0 else -1 for d0, d1 in on_plateau]
    reversals = sum(1 for a, b in zip(plateau_dirs, plateau_dirs[1:], strict=False) if a != b)
    early_drops = [t for t, d0, d1 in changes if d1 < d0 and profile.warmup <= t < profile.ramp_down_start]
    return {
        "interval_s": args.interval,
        "profile": asdict(profile),
        "saturated_at_s": first_sat,
        "first_rise_at_s": first_rise,
        "rise_seconds": rise,
        "rise_within_two_intervals": rise is not None and rise <= 2 * args.interval,
        "steady_changes": steady_changes,
        "steady_reversals": reversals,
        "dropped_only_after_load_fell": not early_drops,
        "peak_recommendation": max((d for _, d in desired), default=None),
        "changes": [{"t": t, "from": d0, "to": d1} for t, d0, d1 in changes],
        "ticks": [asdict(t) for t in ticks],
    }


def plot(result: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ticks = [Tick(**t) for t in result["ticks"]]  # type: ignore[attr-defined]
    times = [t.t for t in ticks]
    fig, load_ax = plt.subplots(figsize=(9, 4.5))
    load_ax.plot(times, [t.load for t in ticks], color="tab:gray", label="client concurrency (load)")
    load_ax.set_xlabel("seconds")
    load_ax.set_ylabel("concurrent requests")
    rep_ax = load_ax.twinx()
    desired = [t.desired if t.desired is not None else float("nan") for t in ticks]
    rep_ax.step(times, desired, where="post", color="tab:red", label="recommended replicas")
    rep_ax.step(times, [t.active for t in ticks], where="post", color="tab:blue", linestyle="--",
                label="replicas taking traffic (at the analysis)")
    rep_ax.set_ylabel("replicas")
    saturated = result.get("saturated_at_s")
    if isinstance(saturated, float):
        load_ax.axvline(saturated, color="tab:orange", linestyle=":", label="first saturated (probe)")
    handles = load_ax.get_legend_handles_labels()[0] + rep_ax.get_legend_handles_labels()[0]
    labels = load_ax.get_legend_handles_labels()[1] + rep_ax.get_legend_handles_labels()[1]
    load_ax.legend(handles, labels, loc="upper left", fontsize=8)
    load_ax.set_title(f"epp autoscale: recommendation vs load (interval {result['interval_s']}s, "
                      f"rise {result['rise_seconds']}s, steady changes {result['steady_changes']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.autoscale.run", description=__doc__.split("\n")[0])
    p.add_argument("--interval", type=float, default=2.0, help="analysis period, seconds")
    p.add_argument("--probe", type=float, default=0.25, help="saturation probe period, seconds")
    p.add_argument("--max-replicas", type=int, default=6)
    p.add_argument("--max-num-seqs", type=int, default=4, help="simulator batch size (small: queues form early)")
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--time-scale", type=float, default=0.1, help="simulator wall seconds per simulated second")
    p.add_argument("--low", type=int, default=3, help="client concurrency before and after the ramp")
    p.add_argument("--high", type=int, default=20, help="client concurrency on the plateau")
    p.add_argument("--warmup", type=float, default=6.0)
    p.add_argument("--ramp", type=float, default=6.0)
    p.add_argument("--plateau", type=float, default=16.0)
    p.add_argument("--cooldown", type=float, default=14.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/autoscale/results"))
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "autoscale.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "autoscale.png")
    shown = {k: v for k, v in result.items() if k not in ("ticks", "profile")}
    print(json.dumps(shown, indent=2))
    print(f"wrote {args.out / 'autoscale.json'} and {args.out / 'autoscale.png'}", file=sys.stderr)
    ok = result["rise_within_two_intervals"] and result["steady_reversals"] == 0 and \
        result["dropped_only_after_load_fell"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
