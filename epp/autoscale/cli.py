"""``epp autoscale``: recommend replica counts from model-server saturation (docs/autoscale.md).

Also runnable on its own: ``python -m epp.autoscale.cli --endpoints ... --model ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "main"]

log = logging.getLogger("epp.autoscale")


def _duration(text: str) -> float:
    from epp.errors import ConfigError
    from epp.framework.params import parse_duration

    try:
        seconds = float(parse_duration(text, "duration"))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return seconds


def _count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return count


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, not {port}")
    return port


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "autoscale", help="recommend replica counts from model-server saturation (for HPA or KEDA)",
        description="Every --interval, read each model's per-replica KV-cache usage and queue length (from the "
                    "model servers or Prometheus) and the picker's flow-control queue, apply WVA's saturation "
                    "rules and publish wva_desired_replicas on /metrics for an HPA or KEDA to act on.")
    configure(p)


def configure(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("metrics source (one of)")
    one = src.add_mutually_exclusive_group(required=True)
    one.add_argument("--endpoints", help="read the model servers' /metrics directly: comma-separated ip:port list")
    one.add_argument("--prometheus-url", help="read through Prometheus, e.g. http://prometheus:9090")
    src.add_argument("--picker-metrics",
                     help="the picker's admin /metrics URL (e.g. http://127.0.0.1:9090/metrics), to count its "
                          "flow-control queue as demand when reading --endpoints (Prometheus reads it itself)")
    src.add_argument("--engine", default="vllm", help="model-server metric names (default: %(default)s)")
    src.add_argument("--window", default="1m",
                     help="Prometheus only: the max_over_time window of the queries (default: %(default)s)")
    src.add_argument("--scrape-timeout", type=_duration, default=5.0,
                     help="timeout of one scrape or Prometheus query (default: 5s)")
    what = p.add_argument_group("what to analyze")
    what.add_argument("--model", action="append", required=True, metavar="NAME",
                      help="served model name to analyze (repeat for several)")
    what.add_argument("--variant-name",
                      help="variant_name label of the metrics (default: the model name; only with one --model)")
    what.add_argument("--namespace", default="default", help="namespace label (default: %(default)s)")
    what.add_argument("--accelerator-type", default="unknown",
                      help="accelerator_type label, e.g. H100 (default: %(default)s)")
    what.add_argument("--overrides", type=Path,
                      help="YAML file of per-model thresholds (docs/autoscale.md), reloaded when it changes")
    run = p.add_argument_group("running")
    run.add_argument("--interval", type=_duration, default=30.0, help="analysis period (default: 30s)")
    run.add_argument("--scale-down-after", type=_count, default=3, metavar="N",
                     help="publish a lower count only after N analyses in a row allowed it, and then the highest "
                          "of their targets (rises are published at once; default: %(default)s)")
    run.add_argument("--metrics-port", type=_port, default=9091,
                     help="HTTP port of /metrics, /healthz, /debug/autoscale (0: any free port; default: %(default)s)")
    run.add_argument("--metrics-bind", default="127.0.0.1", help="address of that port (default: %(default)s)")
    run.add_argument("--once", action="store_true",
                     help="analyze once, print the result as JSON and exit (1 when a model's metrics are missing)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_run)


def _variants(args: argparse.Namespace) -> list[Any]:
    from epp.autoscale.metrics import Variant
    from epp.autoscale.service import ModelTarget

    models = list(dict.fromkeys(args.model))
    if args.variant_name and len(models) > 1:
        raise ValueError("--variant-name needs exactly one --model (each model is its own variant)")
    return [ModelTarget(m, Variant(args.variant_name or m, args.namespace, args.accelerator_type)) for m in models]


def _reader(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """The readings reader for the chosen source, and what to close at the end."""
    from epp.autoscale import queries as q
    from epp.autoscale.cache import TTLCache
    from epp.autoscale.podscrape import PodScrapeSource
    from epp.autoscale.prometheus import PrometheusSource
    from epp.autoscale.service import QueryNames, source_reader
    from epp.autoscale.templates import check_duration

    # Each analysis must see fresh numbers: the caches only serve get(), never refresh().
    names = QueryNames(q.KV_CACHE_USAGE, q.QUEUE_LENGTH, q.RUNNING_REQUESTS, q.FLOW_CONTROL_QUEUE_SIZE)

    def params(model: str) -> dict[str, str]:
        return q.query_params(model, args.window)

    if args.prometheus_url:
        check_duration(args.window)
        if args.picker_metrics:
            raise ValueError("--picker-metrics is for --endpoints; with Prometheus the picker's queue is queried there")
        prom = PrometheusSource(args.prometheus_url, q.prometheus_queries(args.engine), timeout=args.scrape_timeout,
                                cache=TTLCache())
        return source_reader(prom, names, params=params), [prom]
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    if not endpoints:
        raise ValueError("--endpoints: no endpoint given")
    pods = PodScrapeSource(endpoints, q.pod_queries(args.engine), timeout=args.scrape_timeout)
    closing: list[Any] = [pods]
    picker = None
    if args.picker_metrics:
        picker = PodScrapeSource([args.picker_metrics], q.picker_pod_queries(), timeout=args.scrape_timeout)
        closing.append(picker)
    else:
        names = QueryNames(names.kv_usage, names.waiting, names.running, None)
    return source_reader(pods, names, params=params, picker=picker, replicas=pods.endpoints), closing


async def _main(args: argparse.Namespace) -> int:
    from aiohttp import web

    from epp.autoscale.metrics import AutoscaleMetrics, build_metrics_app
    from epp.autoscale.overrides import OverridesFile
    from epp.autoscale.service import AutoscaleService
    from epp.server.admin import strict_json

    overrides = OverridesFile(args.overrides)
    overrides.load()
    read, closing = _reader(args)
    metrics = AutoscaleMetrics()
    service = AutoscaleService(read, _variants(args), overrides, metrics, interval=args.interval,
                               scale_down_after=1 if args.once else args.scale_down_after)
    try:
        if args.once:
            recs = await service.analyze_once()
            print(strict_json({"models": [r.as_dict() for r in recs]}))
            return 1 if any(r.stale for r in recs) else 0
        runner = web.AppRunner(build_metrics_app(metrics, service.snapshot), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, args.metrics_bind, args.metrics_port)
        await site.start()
        port = runner.addresses[0][1]
        print(f"epp autoscale: serving /metrics on http://{args.metrics_bind}:{port}/metrics, "
              f"analyzing {', '.join(t.model for t in service.targets)} every {args.interval:g}s",
              file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await service.run(stop)
        finally:
            await runner.cleanup()
        return 0
    finally:
        for source in closing:
            await source.aclose()


def _run(args: argparse.Namespace) -> int:
    from epp.errors import ConfigError

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per scrape otherwise
    try:
        return asyncio.run(_main(args))
    except (ConfigError, ValueError) as exc:
        print(f"epp autoscale: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"epp autoscale: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """``epp autoscale`` without the ``epp`` entry point (tests, ``python -m epp.autoscale.cli``)."""
    parser = argparse.ArgumentParser(prog="epp autoscale")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_parser(subparsers)
    args = parser.parse_args(["autoscale", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess
    sys.exit(main())
