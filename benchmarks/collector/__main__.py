"""What the picker's collector costs with 100 endpoints, and how fresh its data stays.

One page server process (``benchmarks.collector.pageserver``) serves a simulated vLLM
``/metrics`` page (about 50 KB, taken from ``epp sim``) on 100 loopback ports. The real
picker (``epp serve --endpoints ...``) scrapes them at each interval for a bounded time, and
the run reports, per interval:

- the picker process's CPU (utime+stime from ``/proc/<pid>/stat``) as a fraction of one core,
  and the page server's, since both share the machine;
- pages served per second against the target (endpoints / interval);
- scrape age p50/p99/max: ``ageSeconds`` of every endpoint in ``/debug/endpoints``, sampled
  every ``--sample-every`` seconds.

In the same run, before the picker starts, the cost of one page by parser:
``prometheus_client`` on the whole page, on a page filtered to the lines that start with a
wanted name (filtering included), and ``epp.datalayer.promtext.parse_series`` (what the
collector runs). With ``--profile`` it then runs the same collector in-process under
cProfile (on uvloop, like ``epp serve``) and splits its CPU into parse, extract and the rest
(HTTP client and event loop).

    python -m benchmarks.collector [--endpoints 100] [--intervals 50ms,200ms] [--seconds 20] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.timing import median_us
from epp.datalayer.collector import Collector, SourceBinding
from epp.datalayer.endpoint import Endpoint, EndpointMetadata
from epp.datalayer.pool import EndpointPool
from epp.datalayer.promtext import parse_series
from epp.devstack.processes import ManagedProcess, epp_command, free_port, wait_for_http
from epp.framework.plugin import Handle
from epp.plugins.datalayer.core_metrics import CoreMetricsExtractor
from epp.plugins.datalayer.metrics_source import MetricsDataSource, ScrapedSeries

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (fields 14 and 15 of /proc/<pid>/stat, after the parenthesised name)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bytes(response.read())


def realistic_page(workdir: Path) -> str:
    """The simulator's own page (the same builder ``benchmarks.scrape`` measures)."""
    port = free_port()
    sim = ManagedProcess("sim", epp_command("sim", "--port", str(port)), workdir / "sim.log").start()
    try:
        sim.wait_for_line("epp-sim ready")
        return get(f"http://127.0.0.1:{port}/metrics").decode()
    finally:
        sim.stop()


def parse_costs(page: str, extractor: CoreMetricsExtractor, batches: int) -> tuple[float, float]:
    """Print the parsers' cost per page; return parse_series's and the extractor's, in us."""
    endpoint = Endpoint(EndpointMetadata("x", "127.0.0.1", 1, 1))
    wanted = extractor.wanted_series(endpoint)
    prefixes = tuple(wanted)

    def filtered() -> object:
        kept = "\n".join(line for line in page.split("\n") if line.startswith(prefixes))
        return list(text_string_to_metric_families(kept))

    ours = median_us(lambda: parse_series(page, wanted), batches, 300)
    line_filtered = median_us(filtered, batches, 100)
    whole = median_us(lambda: list(text_string_to_metric_families(page)), batches, 20)
    print(f"page: {len(page) / 1024:.1f} KiB, {page.count(chr(10))} lines; the extractors want {len(wanted)} series")
    print("parse one page (median us; ratio to parse_series)")
    print(f"  epp promtext.parse_series (targeted)        {ours:9.1f}   1.0x")
    print(f"  prometheus_client, line-filtered page        {line_filtered:9.1f}   {line_filtered / ours:5.1f}x")
    print(f"  prometheus_client, whole page                {whole:9.1f}   {whole / ours:5.1f}x")
    data = ScrapedSeries(parse_series(page, wanted))
    extract = median_us(lambda: extractor.extract(data, endpoint), batches, 300)
    print(f"  then the core extractor on the parsed series {extract:9.1f}")
    return ours, extract


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_picker(interval: str, addresses: list[str], server: ManagedProcess, server_url: str, seconds: float,
               sample_every: float, workdir: Path, per_page_us: tuple[float, float]) -> None:
    admin = free_port()
    argv = epp_command("serve", "--endpoints", ",".join(addresses), "--refresh-metrics-interval", interval,
                       "--grpc-port", str(free_port()), "--grpc-health-port", str(free_port()),
                       "--metrics-port", str(admin), "--log-level", "warning")
    picker = ManagedProcess("epp", argv, workdir / f"epp-{interval}.log").start()
    debug = f"http://127.0.0.1:{admin}/debug/endpoints"
    try:
        wait_for_http(f"http://127.0.0.1:{admin}/healthz", 30, picker)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every endpoint scraped once
            eps = json.loads(get(debug))["endpoints"]
            if all(e["metrics"]["ageSeconds"] is not None for e in eps):
                break
            time.sleep(0.2)
        time.sleep(2.0)  # warm-up: connections open, phases spread
        served0, picker0, server0 = int(get(server_url)), cpu_seconds(picker.pid), cpu_seconds(server.pid)
        start = time.monotonic()
        ages: list[float] = []
        failing = 0
        while (elapsed := time.monotonic() - start) < seconds:
            eps = json.loads(get(debug))["endpoints"]
            ages += [e["metrics"]["ageSeconds"] for e in eps if e["metrics"]["ageSeconds"] is not None]
            failing = max(failing, sum(1 for e in eps if e["scrape"] and e["scrape"]["consecutiveFailures"]))
            time.sleep(max(0.0, sample_every - (time.monotonic() - start - elapsed)))
        wall = time.monotonic() - start
        served = int(get(server_url)) - served0
        picker_cpu = (cpu_seconds(picker.pid) - picker0) / wall
        server_cpu = (cpu_seconds(server.pid) - server0) / wall
    finally:
        picker.stop()
    seconds_per_tick = float(interval.removesuffix("ms")) / 1000
    target = len(addresses) / seconds_per_tick
    print(f"interval {interval}: {len(addresses)} endpoints, {wall:.1f} s")
    print(f"  picker CPU        {picker_cpu:6.2f} cores   (page server {server_cpu:.2f} cores)")
    print(f"  pages fetched     {served / wall:7.0f}/s of {target:.0f}/s target ({served / wall / target:.0%}); "
          f"picker CPU per page {picker_cpu * wall / max(1, served) * 1e6:.0f} us")
    parse_cores, extract_cores = (us * served / wall / 1e6 for us in per_page_us)
    rest = picker_cpu - parse_cores - extract_cores
    print(f"  of which (pages/s x median cost per page): parse {parse_cores:.2f} cores, extract "
          f"{extract_cores:.2f}, the rest (HTTP client, event loop, admin) {rest:.2f}")
    p50, p99 = statistics.median(ages) * 1000, percentile(ages, 0.99) * 1000
    print(f"  scrape age        p50 {p50:5.0f} ms   p99 {p99:5.0f} ms   max {max(ages) * 1000:5.0f} ms   "
          f"({len(ages)} samples; endpoints failing at once: {failing})")


async def profile_collector(ports: list[int], interval: float, seconds: float) -> None:
    """The collector alone in this process: CPU per page, then where it goes under cProfile."""
    pool = EndpointPool()
    pool.replace_all([EndpointMetadata(f"ep{i}", "127.0.0.1", p, p) for i, p in enumerate(ports)])
    handle = Handle(pool=pool)
    extractor = CoreMetricsExtractor("core", None, handle)
    source = MetricsDataSource("metrics", None, handle)
    source.bind_extractors([extractor])
    collector = Collector(pool, [SourceBinding(source, (extractor,))], interval=interval)
    task = asyncio.create_task(collector.run())
    try:
        await asyncio.sleep(2.0)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        plain = (time.process_time() - cpu0) / (time.monotonic() - wall0)
        # CPU time, not wall time: waiting in epoll is not work.
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        profiled_cpu = time.process_time() - cpu0
        profiler.disable()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await source.aclose()
    stats = pstats.Stats(profiler)
    raw = stats.stats  # type: ignore[attr-defined]  # {(file, line, func): (cc, nc, tt, ct, callers)}
    total = sum(v[2] for v in raw.values())

    def cumulative(func: str, file_part: str) -> float:
        return sum(v[3] for k, v in raw.items() if k[2] == func and file_part in k[0])

    parse = cumulative("parse_series", "promtext")
    extract = cumulative("extract", "core_metrics")
    decode = sum(v[2] for k, v in raw.items() if k[2] == "<method 'decode' of 'bytes' objects>")
    aiohttp_own = sum(v[2] for k, v in raw.items() if "aiohttp" in k[0])
    asyncio_own = sum(v[2] for k, v in raw.items() if "asyncio" in k[0] or "selectors" in k[0])
    print(f"in-process collector, {len(ports)} endpoints at {interval * 1000:g} ms: {plain:.2f} cores without the "
          f"profiler ({profiled_cpu / seconds:.2f} with it)")
    print("  profiled CPU by part (share of profiled time):")
    for label, part in (("parse_series (cumulative)", parse), ("core extractor (cumulative)", extract),
                        ("bytes.decode", decode), ("aiohttp code (own time)", aiohttp_own),
                        ("asyncio + selectors (own time)", asyncio_own),
                        ("everything else (sockets, C calls, collector)",
                         total - parse - extract - decode - aiohttp_own - asyncio_own)):
        print(f"    {label:48s} {part / total:6.1%}")
    print("  top functions by own time:")
    for (file, line, func), v in sorted(raw.items(), key=lambda kv: -kv[1][2])[:12]:
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if file != "~" else ""
        print(f"    {v[2] / total:6.1%}  {func[:60]:60s} {where}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--intervals", default="50ms,200ms", help="comma-separated, in ms (Go duration)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per interval")
    parser.add_argument("--sample-every", type=float, default=0.5, help="seconds between /debug/endpoints samples")
    parser.add_argument("--batches", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="also profile the collector in-process (5 s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        page = realistic_page(workdir)
        extractor = CoreMetricsExtractor("core", None, Handle(pool=EndpointPool()))
        per_page_us = parse_costs(page, extractor, args.batches)
        page_file, ports_file = workdir / "page.txt", workdir / "ports.txt"
        page_file.write_text(page)
        server = ManagedProcess(
            "pages", [sys.executable, "-m", "benchmarks.collector.pageserver", str(page_file), str(args.endpoints),
                      str(ports_file)], workdir / "pages.log").start()
        try:
            server.wait_for_line("page server ready")
            ports = [int(p) for p in ports_file.read_text().split()]
            server_url = f"http://127.0.0.1:{ports[0]}/count"
            addresses = [f"127.0.0.1:{p}" for p in ports]
            for interval in args.intervals.split(","):
                run_picker(interval.strip(), addresses, server, server_url, args.seconds, args.sample_every, workdir,
                           per_page_us)
            if args.profile:
                first = float(args.intervals.split(",")[0].strip().removesuffix("ms")) / 1000
                try:
                    import uvloop  # the loop `epp serve` runs on
                except ImportError:
                    asyncio.run(profile_collector(ports, first, 5.0))
                else:
                    uvloop.run(profile_collector(ports, first, 5.0))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
