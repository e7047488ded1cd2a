"""What one scrape of a model server costs the picker, by HTTP client and by parser.

Serves a simulated vLLM ``/metrics`` page (about 50 KB, like vLLM 0.32) from an in-process
simulator and measures, in one run:

- parsing: ``epp.datalayer.promtext.parse_series`` (only the series the extractors want)
  against ``prometheus_client``'s full text parser;
- fetching: the picker's keep-alive client (``epp.datalayer.httpscrape``, plain http)
  against aiohttp (its client for https, and before) and httpx when it is installed;
- the collector's whole scrape (fetch + parse + extract) per endpoint, with either client,
  on the whole page and on the filtered one (``filterSeries``, ``path: /metrics/``).

Figures are medians of several batches, in microseconds of the client's CPU per scrape.
Contenders that are compared run their batches interleaved (A, B, A, B, ...) and each
ratio is the median of the per-batch ratios, so the machine's load moves both alike.

    python -m benchmarks.scrape [--batches 5] [--scrapes 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.timing import median_us
from epp.datalayer.endpoint import Endpoint, EndpointMetadata
from epp.datalayer.httpscrape import KeepAliveScraper
from epp.datalayer.pool import EndpointPool
from epp.datalayer.promtext import parse_series
from epp.devstack.processes import ManagedProcess, epp_command, free_port
from epp.framework.plugin import Handle
from epp.plugins.datalayer.core_metrics import CoreMetricsExtractor
from epp.plugins.datalayer.metrics_source import MetricsDataSource, MetricsSourceParams

Contender = Callable[[], Awaitable[object]]


async def interleaved_cpu_us(contenders: dict[str, Contender], batches: int, n: int) -> dict[str, list[float]]:
    """CPU µs per call of each contender, one list entry per batch, batches interleaved."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():  # warm-up: connections open, caches filled
        for _ in range(10):
            await fn()
    for _ in range(batches):
        for name, fn in contenders.items():
            start = time.process_time()
            for _ in range(n):
                await fn()
            samples[name].append((time.process_time() - start) / n * 1e6)
    return samples


def ratio(samples: dict[str, list[float]], name: str, baseline: str) -> float:
    return statistics.median(a / b for a, b in zip(samples[name], samples[baseline], strict=True))


def report(samples: dict[str, list[float]], baseline: str, label: str) -> None:
    for name, values in samples.items():
        line = f"{label} {name:<40} {statistics.median(values):9.1f} us"
        if name != baseline:
            line += f"   ratio {ratio(samples, name, baseline):5.2f}x {baseline}"
        print(line, flush=True)


async def run(batches: int, scrapes: int, workdir: str) -> None:
    # The simulator runs in its own process so process_time() below is the client's CPU only.
    port = free_port()
    sim = ManagedProcess("sim", epp_command("sim", "--port", str(port)), Path(workdir) / "sim.log").start()
    try:
        sim.wait_for_line("epp-sim ready")
        url = f"http://127.0.0.1:{port}/metrics"
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                page = await response.text()
            extractor = CoreMetricsExtractor("x", None, Handle(pool=EndpointPool()))
            endpoint = Endpoint(EndpointMetadata("sim", "127.0.0.1", port, port))
            wanted = extractor.wanted_series(endpoint)
            ours = median_us(lambda: parse_series(page, wanted), batches, scrapes)
            full = median_us(lambda: list(text_string_to_metric_families(page)), batches, max(10, scrapes // 10))
            lines = page.count("\n")
            print(f"page: {len(page) / 1024:.1f} KiB, {lines} lines; extractors want {len(wanted)} series")
            print(f"parse  epp promtext (wanted series only) {ours:9.1f} us")
            print(f"parse  prometheus_client (whole page)    {full:9.1f} us   ratio {full / ours:6.1f}x slower")

            async def aiohttp_get() -> bytes:
                async with session.get(url) as r:
                    return await r.read()

            native = KeepAliveScraper()

            async def native_get() -> bytes:
                return (await native.get("127.0.0.1", port, "/metrics")).body

            assert (await native_get()) == (await aiohttp_get())
            contenders: dict[str, Contender] = {"aiohttp (CPU of the client)": aiohttp_get,
                                                "native keep-alive (CPU of the client)": native_get}
            try:
                import httpx
            except ImportError:
                print("fetch  httpx: not installed (pip install httpx to compare)")
                client = None
            else:
                client = httpx.AsyncClient()

                async def httpx_get() -> bytes:
                    assert client is not None
                    return (await client.get(url)).content

                contenders["httpx (CPU of the client)"] = httpx_get
            fetch = await interleaved_cpu_us(contenders, batches, scrapes)
            report(fetch, "aiohttp (CPU of the client)", "fetch ")
            await native.aclose()
            if client is not None:
                await client.aclose()
        ticks: dict[str, Contender] = {}
        sources: list[MetricsDataSource] = []
        for client_name in ("aiohttp", "native"):
            for path, filtered in (("/metrics", False), ("/metrics/", True)):
                params = MetricsSourceParams(client=client_name, path=path,  # type: ignore[arg-type]
                                             filter_series=filtered)
                source = MetricsDataSource("m", params, Handle(pool=EndpointPool()))
                source.bind_extractors([extractor])
                sources.append(source)

                async def tick(source: MetricsDataSource = source) -> None:
                    extractor.extract(await source.collect(endpoint), endpoint)

                ticks[f"{client_name} {'filtered page' if filtered else 'whole page'}"] = tick
        whole = await interleaved_cpu_us(ticks, batches, scrapes)
        for source in sources:
            await source.aclose()
        for page_kind in ("whole page", "filtered page"):
            pair = {name: whole[name] for name in (f"aiohttp {page_kind}", f"native {page_kind}")}
            report(pair, f"aiohttp {page_kind}", "scrape collector tick (fetch+parse+extract)")
        per_core = statistics.median(whole["native whole page"]) * 20 / 1e4
        print(f"scrape native whole page at 50 ms per endpoint: {per_core:.2f}% of a core per endpoint")
    finally:
        sim.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--scrapes", type=int, default=300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        asyncio.run(run(args.batches, args.scrapes, workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
