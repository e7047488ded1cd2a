"""``epp stack``: the local stack behind ``make run``.

Starts simulated vLLM servers, the picker and real Envoy on loopback, sends a few
requests through Envoy, prints where each one went, and keeps running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("stack", help="run simulators + picker + Envoy locally and show routing",
                              description="Start simulated vLLM servers, the picker and real Envoy on loopback, "
                                          "send demo requests through Envoy and show where each went.")
    p.add_argument("--replicas", type=int, default=3, help="simulated model servers (default: %(default)s)")
    p.add_argument("--workdir", type=Path, default=Path(".stack"), help="logs and generated configs")
    p.add_argument("--free-ports", action="store_true",
                   help="use free ephemeral ports instead of 8081/9002/9003/9090/19000/8001+")
    p.add_argument("--config-file", type=Path, help="EndpointPickerConfig for the picker (default: built-in)")
    p.add_argument("--time-scale", type=float, default=1.0, help="simulator time scale (0.1 = 10x faster)")
    p.add_argument("--rounds", type=int, default=1, help="times to send the demo requests")
    p.add_argument("--tls", action="store_true",
                   help="ext_proc over TLS: the picker with --secure-serving, Envoy's ext_proc cluster with TLS")
    p.add_argument("--exit-after-demo", action="store_true", help="stop after the demo instead of waiting")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from epp.devstack.demo import format_results, run_demo
    from epp.devstack.processes import StartupError
    from epp.devstack.stack import Stack, StackPorts

    ports = StackPorts.free(args.replicas) if args.free_ports else StackPorts.defaults(args.replicas)
    config_text = args.config_file.read_text() if args.config_file else None
    stack = Stack(args.workdir.resolve(), args.replicas, ports, sim_args=["--time-scale", str(args.time_scale)],
                  config_text=config_text, picker_args=["--secure-serving"] if args.tls else (),
                  envoy_options={"extproc_tls": True} if args.tls else None)
    print(f"starting {args.replicas} simulated vLLM servers, the picker and Envoy (logs in {args.workdir}/) ...",
          flush=True)
    try:
        stack.start()
    except (StartupError, FileNotFoundError, OSError) as exc:
        print(f"epp stack: could not start: {exc}", file=sys.stderr)
        return 1
    try:
        sims = ", ".join(stack.sim_hostport(i) for i in range(args.replicas))
        print(f"simulators: {sims}\npicker:     ext_proc 127.0.0.1:{ports.grpc}, admin {stack.admin_url}\n"
              f"envoy:      {stack.url}\n", flush=True)
        results = asyncio.run(run_demo(stack.url, args.rounds))
        print(format_results(results), flush=True)
        print(f"\nwhy each request went where it did: curl {stack.admin_url}/debug/decisions\n"
              f"try it: curl {stack.url}/v1/completions -H 'content-type: application/json' "
              "-d '{\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"prompt\":\"Hello\",\"max_tokens\":8}'", flush=True)
        failed = [r for r in results if r.status not in (200, 400)]
        if args.exit_after_demo:
            return 1 if failed else 0
        print("\nstack running; Ctrl-C to stop", flush=True)
        stopped = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopped.set())
        stopped.wait()
        return 0
    finally:
        print("stopping ...", flush=True)
        stack.stop()
