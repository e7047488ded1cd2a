"""``epp serve``: run the endpoint picker (flags follow the Go EPP's names)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from epp.framework.params import parse_duration

__all__ = ["add_parser", "grpc_health_port", "options_from_args", "serve_parser"]


def _duration(text: str) -> float:
    from epp.errors import ConfigError

    try:
        return float(parse_duration(text, "duration"))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help="run the endpoint picker (Envoy ext_proc server)",
        description="Run the endpoint picker: an Envoy ext_proc gRPC server that picks a model server per request.")
    net = p.add_argument_group("listening")
    net.add_argument("--bind", default="127.0.0.1",
                     help="address the ext_proc and gRPC health ports listen on (default: %(default)s)")
    net.add_argument("--admin-bind", default="127.0.0.1",
                     help="address the admin HTTP server (/metrics, /healthz, /readyz, /debug) listens on, "
                          "independent of --bind (default: %(default)s)")
    net.add_argument("--grpc-port", type=int, default=9002, help="ext_proc gRPC port (default: %(default)s)")
    net.add_argument("--grpc-health-port", type=int,
                     help="gRPC health port (default: 9003; with --workers N, --grpc-port + N, the first port "
                          "after the workers' ext_proc ports)")
    net.add_argument("--metrics-port", type=int, default=9090,
                     help="HTTP port for /metrics, /healthz, /readyz, /debug (default: %(default)s)")
    sec = p.add_argument_group("security (docs/security.md)")
    sec.add_argument("--admin-token-file", type=Path,
                     help="require 'Authorization: Bearer <token>' on /metrics and /debug/*; the token is this "
                          "file's content, re-read when the file changes (/healthz and /readyz stay open)")
    sec.add_argument("--secure-serving", action="store_true",
                     help="serve ext_proc over TLS (the Go EPP's default; off here so plaintext stacks keep working)")
    sec.add_argument("--cert-path", type=Path,
                     help="directory with tls.crt and tls.key for --secure-serving (default: a self-signed "
                          "certificate generated at start)")
    sec.add_argument("--enable-cert-reload", action="store_true",
                     help="serve a changed tls.crt/tls.key from --cert-path to new connections without a restart")
    sec.add_argument("--admin-rate-limit", type=float, default=100.0,
                     help="admin requests a second (token bucket; /healthz, /readyz, /metrics exempt; 0 turns it "
                          "off; default: %(default)s)")
    sec.add_argument("--admin-rate-burst", type=int, default=200, help="admin rate-limit burst (default: %(default)s)")
    sec.add_argument("--ignore-model-rewrite-header", action="store_true",
                     help="ignore a client-sent x-gateway-model-name-rewrite (set it only from a trusted filter)")
    sec.add_argument("--ignore-criticality-header", action="store_true",
                     help="ignore a client-sent x-workload-criticality: every request counts as criticality 3 "
                          "(for gateways where clients must not rank their own requests)")
    sec.add_argument("--plain-errors", action="store_true",
                     help="answer the picker's own errors with the Go EPP's text/plain body "
                          "(inference error: <Code> - <message>) instead of OpenAI's JSON error object")
    cfg = p.add_argument_group("configuration")
    cfg.add_argument("--config-file", type=Path, help="EndpointPickerConfig YAML file")
    cfg.add_argument("--config-text", help="EndpointPickerConfig YAML text")
    cfg.add_argument("--endpoints", help="static pool: comma-separated ip:port list")
    cfg.add_argument("--pool-file", type=Path, help="pool YAML file, watched for changes")
    cfg.add_argument("--objectives-file", type=Path,
                     help="InferenceObjective YAML documents (name -> priority for x-gateway-inference-objective), "
                          "watched for changes")
    cfg.add_argument("--pool-name", default="default", help="pool name used in metric labels (default: %(default)s)")
    cfg.add_argument("--refresh-metrics-interval", type=_duration, default=0.05,
                     help="model-server scrape interval, Go duration (default: 50ms)")
    cfg.add_argument("--idle-scrape-interval", type=_duration, default=0.5,
                     help="scrape interval of an endpoint with nothing waiting or running and no request routed "
                          "there since its last scrape (scraping costs the model server's API process CPU); a routed "
                          "request brings it back to --refresh-metrics-interval within one interval; 0 disables "
                          "(default: 500ms)")
    cfg.add_argument("--scrape-timeout", type=_duration, default=1.0, help="scrape timeout (default: 1s)")
    cfg.add_argument("--unready-after-failures", type=int, default=3,
                     help="consecutive failed scrapes before an endpoint gets no new requests (default: %(default)s)")
    cfg.add_argument("--disable-endpoint-subset-filter", action="store_true",
                     help="ignore the proxy's envoy.lb.subset_hint metadata")
    cfg.add_argument("--max-request-body-bytes", type=int, default=64 * 1024 * 1024,
                     help="larger request bodies get 413 (default: 64 MiB)")
    cfg.add_argument("--max-inflight-body-bytes", type=int, default=1024 * 1024 * 1024,
                     help="request-body bytes held across all concurrent streams; beyond it new bodies are "
                          "refused (default: 1 GiB)")
    cfg.add_argument("--decision-log-size", type=int, default=256,
                     help="recent routing decisions kept for /debug/decisions (0 disables; default: %(default)s)")
    cfg.add_argument("--shutdown-delay", type=_duration, default=0.0,
                     help="on SIGTERM, keep serving this long while reporting NOT_SERVING, so health checks "
                          "move traffic to other replicas first (default: 0s)")
    cfg.add_argument("--shutdown-grace-period", type=_duration, default=30.0,
                     help="on SIGTERM, time in-flight streams get to finish (default: 30s)")
    cfg.add_argument("--no-dispatch-accounting", action="store_true",
                     help="do not fold just-routed requests into endpoint metrics between scrapes")
    cfg.add_argument("--eject-after-failures", type=int, default=5,
                     help="failed responses in a row (5xx, or Envoy's 503/504 for connect failures and timeouts) "
                          "that take an endpoint out of rotation; 0 disables (default: %(default)s)")
    cfg.add_argument("--ejection-time", type=_duration, default=10.0,
                     help="how long an ejection lasts, times the ejections in a row, at most 300s (default: 10s)")
    cfg.add_argument("--max-ejection-percent", type=float, default=50.0,
                     help="at most this share of the pool is ejected at once (default: %(default)s)")
    cfg.add_argument("--seed", type=int, help="seed the routing random source (tests, benchmarks)")
    procs = p.add_argument_group("processes (docs/workers.md)")
    procs.add_argument("--workers", type=int, default=1,
                       help="picker processes under one supervisor; worker i serves ext_proc on --grpc-port + i "
                            "(list them all in Envoy's ext_proc cluster: config/envoy-workers.yaml), the supervisor "
                            "serves --metrics-port (every worker's metrics, labelled worker) and --grpc-health-port "
                            "(default: %(default)s, one process)")
    # Set by the supervisor on each worker: it labels the worker's log lines.
    procs.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    state = p.add_argument_group("shared state between picker replicas (docs/workers.md)")
    state.add_argument("--state-store", metavar="URL",
                       help="redis://host:port/db: share the prefix index and in-flight load with the other picker "
                            "replicas and workers (default: none, each keeps its own state)")
    state.add_argument("--no-state-load-push", dest="state_load_push", action="store_false",
                       help="share in-flight load only in the 200 ms rounds, not at each route (for comparisons; "
                            "two replicas then stack short prefills on one model server)")
    state.add_argument("--state-replica-id",
                       help="this replica's id in the store (default: hostname-pid; workers append -w<index>)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_run)


def serve_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with exactly ``epp serve``'s flags (worker command lines are rebuilt from it)."""
    root = argparse.ArgumentParser(prog="epp")
    subparsers = root.add_subparsers()
    add_parser(subparsers)
    parser: argparse.ArgumentParser = subparsers.choices["serve"]
    return parser


def grpc_health_port(args: argparse.Namespace) -> int:
    if args.grpc_health_port is not None:
        return int(args.grpc_health_port)
    return 9003 if args.workers == 1 else int(args.grpc_port) + int(args.workers)


def options_from_args(args: argparse.Namespace) -> Any:
    from epp.server.app import ServeOptions

    return ServeOptions(
        bind=args.bind, admin_bind=args.admin_bind, admin_token_file=args.admin_token_file,
        secure_serving=args.secure_serving, cert_path=args.cert_path, enable_cert_reload=args.enable_cert_reload,
        honor_rewrite_header=not args.ignore_model_rewrite_header,
        admin_rate_limit=args.admin_rate_limit or None, admin_rate_burst=args.admin_rate_burst,
        honor_criticality_header=not args.ignore_criticality_header, objectives_file=args.objectives_file,
        plain_errors=args.plain_errors,
        max_inflight_body_bytes=args.max_inflight_body_bytes,
        grpc_port=args.grpc_port, grpc_health_port=grpc_health_port(args),
        metrics_port=args.metrics_port, config_file=args.config_file, config_text=args.config_text,
        endpoints=args.endpoints, pool_file=args.pool_file, pool_name=args.pool_name,
        refresh_metrics_interval=args.refresh_metrics_interval, scrape_timeout=args.scrape_timeout,
        idle_scrape_interval=args.idle_scrape_interval,
        unready_after_failures=args.unready_after_failures,
        honor_subset_hint=not args.disable_endpoint_subset_filter,
        max_request_body_bytes=args.max_request_body_bytes, decision_log_size=args.decision_log_size,
        shutdown_grace_period=args.shutdown_grace_period, shutdown_delay=args.shutdown_delay, seed=args.seed,
        account_dispatches=not args.no_dispatch_accounting,
        eject_after_failures=args.eject_after_failures, ejection_time=args.ejection_time,
        max_ejection_percent=args.max_ejection_percent,
        state_store=args.state_store, state_load_push=args.state_load_push,
        # Workers given one explicit id would skip each other's records as their own.
        state_replica_id=(None if args.state_replica_id is None else
                          args.state_replica_id + ("" if args.worker_index is None else f"-w{args.worker_index}")),
    )


async def _serve(options: Any) -> int:
    from epp.server.app import PickerServer

    server = PickerServer(options)
    server.build()
    await server.start()
    # Everything built so far lives as long as the process: keep it out of the garbage
    # collector's full passes, which otherwise traverse it again and again.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # a second signal while draining: stop now
            logging.getLogger("epp").warning("second signal: exiting without waiting for in-flight requests")
            os._exit(1)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()
    logging.getLogger("epp").info("shutting down: draining in-flight requests (up to %gs)",
                                  options.shutdown_grace_period)
    await server.stop(delay=options.shutdown_delay)
    return 0


def _run(args: argparse.Namespace) -> int:
    from epp.errors import ConfigError

    worker = "" if args.worker_index is None else f"worker-{args.worker_index} "
    logging.basicConfig(level=args.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s {worker}%(name)s: %(message)s")
    try:
        if args.workers != 1:
            # The supervisor only forks to exec a worker: gRPC's fork handlers have nothing to
            # do there and log a warning on every fork. Read when grpc is first imported.
            os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
            from epp.server.workers import run_supervisor

            return run_supervisor(args, serve_parser(), run_loop)
        options = options_from_args(args)
        return run_loop(_serve(options))
    except ConfigError as exc:
        print(f"epp: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"epp: {exc}", file=sys.stderr)
        return 1


def run_loop(main: Any) -> int:
    """Run a coroutine on uvloop when installed (measured faster for gRPC), else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return int(asyncio.run(main))
    return int(uvloop.run(main))
