"""What the picker's scraping costs the model server: its API server's CPU, by scrape interval.

Scrapes one model server with the picker's own collector (``epp.datalayer.collector``, the
``metrics-data-source`` and ``core-metrics-extractor`` plugins) for a window per setting and
reads the server process's CPU time from ``/proc/<pid>/stat`` before and after. Settings: no
scraping, then each ``--intervals`` value, then each interval with the idle backoff
(``--idle-interval``). Each window runs idle and under a light load (``--rate`` short
completions per second sent straight to the server, each also counted as a dispatch from
the picker, as routing through it would). Reported per setting: the server's CPU in percent
of one core (median of ``--repeats`` windows), scrapes per second, the extra CPU per scrape,
and the ratio to no scraping measured in the same run; plus the time to fetch one page.

The process measured is the one listening on the server's port (vLLM's API server, not its
engine core; ``--engine-pid`` adds a column for the engine core). Without ``--vllm-url`` an
``epp sim`` is started and measured instead, so the script stays usable without vLLM.

    python -m benchmarks.scrape.vllm_cost --vllm-url http://127.0.0.1:8000 [--seconds 8] [--repeats 3]
    python -m benchmarks.scrape.vllm_cost              # against epp sim
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from epp.datalayer.collector import Collector, SourceBinding
from epp.datalayer.dispatch import account_dispatch
from epp.datalayer.endpoint import Endpoint, EndpointMetadata
from epp.datalayer.pool import EndpointPool
from epp.devstack.processes import ManagedProcess, epp_command, free_port
from epp.framework.plugin import Handle
from epp.plugins.datalayer.core_metrics import CoreMetricsExtractor
from epp.plugins.datalayer.metrics_source import MetricsDataSource, MetricsSourceParams

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def listening_pid(port: int) -> int:
    """The process holding the listening TCP socket on ``port`` (IPv4 or IPv6)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid)
        except OSError:
            continue
    raise RuntimeError(f"no process found listening on port {port}")


@dataclass(frozen=True)
class Setting:
    label: str
    interval: float | None  # None: no scraping
    idle_interval: float | None = None


@dataclass(frozen=True)
class Window:
    server_cpu: float  # fraction of one core
    engine_cpu: float
    scrapes: int
    seconds: float


class CountingSource(MetricsDataSource):
    scrapes = 0

    async def collect(self, endpoint: Endpoint) -> object:  # type: ignore[override]
        self.scrapes += 1
        return await super().collect(endpoint)


async def light_load(session: aiohttp.ClientSession, url: str, model: str, rate: float, endpoint: Endpoint,
                     stop: asyncio.Event) -> None:
    """Short completions at ``rate`` per second, each counted as a dispatch from the picker."""
    body = {"model": model, "prompt": "the picker routes this short request " * 4, "max_tokens": 16}
    pending: set[asyncio.Task[None]] = set()

    async def one() -> None:
        try:
            async with session.post(f"{url}/v1/completions", json=body) as response:
                await response.read()
        except aiohttp.ClientError:
            pass

    while not stop.is_set():
        account_dispatch(endpoint, prompt_bytes=len(body["prompt"]))  # type: ignore[arg-type]
        task = asyncio.create_task(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1 / rate)
    await asyncio.gather(*pending, return_exceptions=True)


async def measure(url: str, model: str, pid: int, engine_pid: int | None, setting: Setting, seconds: float,
                  rate: float, wanted_only: bool) -> Window:
    parts = urlsplit(url)
    port = parts.port or 80
    pool = EndpointPool()
    pool.replace_all([EndpointMetadata("server", parts.hostname or "127.0.0.1", port, port)])
    endpoint = pool.endpoints()[0]
    handle = Handle(pool=pool)
    extractor = CoreMetricsExtractor("core", None, handle)
    params = MetricsSourceParams(path=wanted_only_path(sorted(extractor.wanted_series(endpoint)))) if wanted_only \
        else None
    source = CountingSource("metrics", params, handle)
    source.bind_extractors([extractor])
    stop = asyncio.Event()
    scraping: asyncio.Task[None] | None = None
    loading: asyncio.Task[None] | None = None
    async with aiohttp.ClientSession() as session:
        if setting.interval is not None:
            collector = Collector(pool, [SourceBinding(source, (extractor,))], interval=setting.interval,
                                  idle_interval=setting.idle_interval)
            scraping = asyncio.create_task(collector.run())
            await asyncio.sleep(min(1.0, setting.interval * 3))  # first scrapes in: the backoff has settled
        if rate > 0:
            loading = asyncio.create_task(light_load(session, url, model, rate, endpoint, stop))
        scrapes_before = source.scrapes
        cpu_before = cpu_seconds(pid)
        engine_before = cpu_seconds(engine_pid) if engine_pid else 0.0
        started = time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(pid) - cpu_before
        engine = (cpu_seconds(engine_pid) - engine_before) if engine_pid else 0.0
        scrapes = source.scrapes - scrapes_before
        stop.set()
        if scraping is not None:
            scraping.cancel()
        await asyncio.gather(*(t for t in (scraping, loading) if t is not None), return_exceptions=True)
    await source.aclose()
    return Window(cpu / elapsed, engine / elapsed, scrapes, elapsed)


async def page_fetch_ms(url: str, count: int) -> tuple[float, int]:
    """Median wall time of one /metrics GET, and the page size."""
    times: list[float] = []
    size = 0
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.get(f"{url}/metrics") as response:
                size = len(await response.read())
            times.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.05)
    return statistics.median(times), size


async def fetch_cost(url: str, path: str, pid: int, count: int) -> tuple[float, float, int] | None:
    """Server CPU ms per GET of ``path``, median wall ms, and the body size; None if not served (non-200)."""
    times: list[float] = []
    size = 0
    async with aiohttp.ClientSession() as session:
        cpu_before = cpu_seconds(pid)
        for _ in range(count):
            started = time.perf_counter()
            async with session.get(f"{url}{path}") as response:
                if response.status != 200:
                    return None
                size = len(await response.read())
            times.append((time.perf_counter() - started) * 1000)
        cpu = cpu_seconds(pid) - cpu_before
    return cpu / count * 1000, statistics.median(times), size


def wanted_only_path(names: list[str]) -> str:
    """prometheus_client's own ``name[]`` filter. vLLM 0.32 serves plain ``/metrics`` from
    prometheus-fastapi-instrumentator (whole page, query ignored) and ``/metrics/`` from
    prometheus_client's ASGI app, which honours it."""
    return "/metrics/?" + "&".join(f"name[]={name}" for name in names)


async def compare_fetches(url: str, pid: int, count: int) -> None:
    pool = EndpointPool()
    pool.replace_all([EndpointMetadata("server", "127.0.0.1", 1, 1)])
    wanted = sorted(CoreMetricsExtractor("core", None, Handle(pool=pool)).wanted_series(pool.endpoints()[0]))
    print(f"one page, {count} GETs each (server CPU per GET; interleaved, medians of 3 rounds):")
    rounds: dict[str, list[tuple[float, float, int]]] = {"whole page  /metrics": [],
                                                         "wanted only /metrics/?name[]=": []}
    for _ in range(3):
        for label, path in (("whole page  /metrics", "/metrics"), ("wanted only /metrics/?name[]=",
                                                                    wanted_only_path(wanted))):
            result = await fetch_cost(url, path, pid, count)
            if result is not None:
                rounds[label].append(result)
    full_cpu = statistics.median(r[0] for r in rounds["whole page  /metrics"])
    for label, results in rounds.items():
        if not results:
            print(f"  {label:32} not served by this server")
            continue
        cpu, wall = statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)
        ratio = f"{cpu / full_cpu:5.2f}x" if full_cpu else "  -  "  # below the clock tick: no ratio
        print(f"  {label:32} {results[-1][2] / 1024:7.1f} KiB  CPU {cpu:6.2f} ms ({ratio})  wall {wall:6.2f} ms")


async def served_model(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/models") as response:
        models = await response.json()
    return str(models["data"][0]["id"])


def settings(intervals: list[float], idle_interval: float) -> list[Setting]:
    out = [Setting("no scraping", None)]
    out += [Setting(f"every {i * 1000:g} ms", i) for i in intervals]
    out += [Setting(f"every {i * 1000:g} ms, idle {idle_interval * 1000:g} ms", i, idle_interval)
            for i in intervals if i < idle_interval]
    return out


async def run(url: str, pid: int, engine_pid: int | None, args: argparse.Namespace) -> None:
    model = await served_model(url)
    fetch_ms, size = await page_fetch_ms(url, 21)
    print(f"server {url} model {model!r}; measuring pid {pid}" + (f", engine pid {engine_pid}" if engine_pid else ""))
    print(f"/metrics page: {size / 1024:.1f} KiB, fetch (render + transfer) median {fetch_ms:.2f} ms wall")
    await compare_fetches(url, pid, args.fetches)
    if args.fetches_only:
        return
    chosen = settings(args.intervals, args.idle_interval)
    for load_label, rate in (("idle", 0.0), (f"light load, {args.rate:g} req/s", args.rate)):
        results: dict[str, list[Window]] = {s.label: [] for s in chosen}
        for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits every setting alike
            for setting in chosen:
                results[setting.label].append(
                    await measure(url, model, pid, engine_pid, setting, args.seconds, rate, args.wanted_only))
        base = statistics.median(w.server_cpu for w in results[chosen[0].label])
        print(f"\n{load_label}: median of {args.repeats} windows of {args.seconds:g} s"
          + (", scraping the wanted series only" if args.wanted_only else ""))
        print(f"  {'setting':34} {'server CPU':>11} {'x none':>7} {'scrapes/s':>10} {'CPU/scrape':>11}"
              + (f" {'engine CPU':>11}" if engine_pid else ""))
        for setting in chosen:
            windows = results[setting.label]
            cpu = statistics.median(w.server_cpu for w in windows)
            rate_s = statistics.median(w.scrapes / w.seconds for w in windows)
            per_scrape = f"{(cpu - base) / rate_s * 1000:8.2f} ms" if rate_s else f"{'-':>11}"
            ratio = f"{cpu / base:6.1f}x" if base else f"{'-':>7}"
            line = f"  {setting.label:34} {cpu * 100:10.2f}% {ratio} {rate_s:10.1f} {per_scrape}"
            if engine_pid:
                line += f" {statistics.median(w.engine_cpu for w in windows) * 100:10.2f}%"
            print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm-url", help="a running model server (default: start epp sim)")
    parser.add_argument("--engine-pid", type=int, help="also report this process's CPU (vLLM's EngineCore)")
    parser.add_argument("--intervals", type=lambda s: [float(x) for x in s.split(",")], default=[0.05, 0.1, 0.2, 0.5],
                        help="scrape intervals in seconds (default: 0.05,0.1,0.2,0.5)")
    parser.add_argument("--idle-interval", type=float, default=1.0,
                        help="idle backoff interval tried with each shorter interval (default: 1.0)")
    parser.add_argument("--seconds", type=float, default=8.0, help="window per setting (default: 8)")
    parser.add_argument("--repeats", type=int, default=3, help="windows per setting; medians (default: 3)")
    parser.add_argument("--rate", type=float, default=2.0, help="light load, requests per second (default: 2)")
    parser.add_argument("--fetches", type=int, default=100, help="GETs per round in the page comparison (default: 100)")
    parser.add_argument("--wanted-only", action="store_true",
                        help="scrape /metrics/?name[]=... (only the extractors' series) instead of /metrics")
    parser.add_argument("--fetches-only", action="store_true", help="only compare whole and filtered page fetches")
    args = parser.parse_args(argv)
    if args.vllm_url:
        url = args.vllm_url.rstrip("/")
        asyncio.run(run(url, listening_pid(urlsplit(url).port or 80), args.engine_pid, args))
        return 0
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        sim = ManagedProcess("sim", epp_command("sim", "--port", str(port)), Path(workdir) / "sim.log").start()
        try:
            sim.wait_for_line("epp-sim ready")
            asyncio.run(run(f"http://127.0.0.1:{port}", sim.pid, None, args))
        finally:
            sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
