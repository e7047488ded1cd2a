"""What one scrape of a model server costs the picker, by HTTP client and by parser.

Serves a simulated vLLM ``/metrics`` page (about 50 KB, like vLLM 0.32) from an in-process
simulator and measures, in one run:

- parsing: ``epp.datalayer.promtext.parse_series`` (only the series the extractors want)
  against ``prometheus_client``'s full text parser;
- fetching: aiohttp (the collector's client) against httpx when it is installed;
- the collector's whole scrape (fetch + parse + extract) per endpoint.

Figures are medians of several batches, in microseconds per scrape, with ratios.

    python -m benchmarks.scrape [--batches 5] [--scrapes 300]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.timing import median_cpu_us_async, median_us
from epp.datalayer.endpoint import Endpoint, EndpointMetadata
from epp.datalayer.pool import EndpointPool
from epp.datalayer.promtext import parse_series
from epp.devstack.processes import ManagedProcess, epp_command, free_port
from epp.framework.plugin import Handle
from epp.plugins.datalayer.core_metrics import CoreMetricsExtractor
from epp.plugins.datalayer.metrics_source import MetricsDataSource


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

            fetch_aiohttp = await median_cpu_us_async(aiohttp_get, batches, scrapes)
            print(f"fetch  aiohttp (CPU of the client)        {fetch_aiohttp:9.1f} us")
        try:
            import httpx
        except ImportError:
            print("fetch  httpx: not installed (pip install httpx to compare)")
        else:
            async with httpx.AsyncClient() as client:
                async def httpx_get() -> bytes:
                    return (await client.get(url)).content

                fetch_httpx = await median_cpu_us_async(httpx_get, batches, scrapes)
            print(f"fetch  httpx (CPU of the client)          {fetch_httpx:9.1f} us   ratio "
                  f"{fetch_httpx / fetch_aiohttp:5.2f}x aiohttp")
        source = MetricsDataSource("m", None, Handle(pool=EndpointPool()))
        source.bind_extractors([extractor])

        async def scrape() -> None:
            extractor.extract(await source.collect(endpoint), endpoint)

        whole = await median_cpu_us_async(scrape, batches, scrapes)
        await source.aclose()
        print(f"scrape collector tick (fetch+parse+extract) {whole:7.1f} us CPU; at 50 ms per endpoint that is "
              f"{whole * 20 / 1e4:.2f}% of a core per endpoint")
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
