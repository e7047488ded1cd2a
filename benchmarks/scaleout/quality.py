"""Routing quality with 1 picker, 2 pickers each on its own state, and 2 pickers sharing state.

The pickers are separate processes behind one Envoy whose ext_proc cluster lists them all
(benchmarks/routing/pickers.py), as ``epp serve --workers 2`` runs them. The sharing
variant passes ``--state-store`` to every picker and starts a fresh ``redis-server``.

Two diagnostic variants (issue 15's no-prefix tail, ``--variants``): "1 of 2 routes" runs a
second picker that scrapes and replicates but gets no requests (its CPU cost without its
decisions), and "2 shared rounds" shares load only through the 200 ms rounds, without
pushing each change (``--no-state-load-push``): the behaviour before pushes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.loadgen import Outcome, run_open_loop
from benchmarks.routing.__main__ import summarize
from benchmarks.routing.pickers import MultiPickerStack
from benchmarks.routing.workloads import Workload
from benchmarks.scaleout.procstats import RedisServer, StoreTraffic, cpu_seconds
from epp.devstack.stack import Stack
from epp.server.cli import serve_parser

__all__ = ["DIAGNOSTIC_VARIANTS", "VARIANTS", "Variant", "run_variant", "state_store_supported"]


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    pickers: int
    shared: bool
    routed: int | None = None  # pickers Envoy routes to; None: all
    picker_args: tuple[str, ...] = ()


VARIANTS = (Variant("1 picker", 1, False), Variant("2 pickers", 2, False), Variant("2 pickers shared", 2, True))
DIAGNOSTIC_VARIANTS = (Variant("1 of 2 routes", 2, False, routed=1),
                       Variant("2 shared rounds", 2, True, picker_args=("--no-state-load-push",)))


def state_store_supported() -> bool:
    return "--state-store" in serve_parser()._option_string_actions  # noqa: SLF001 - argparse has no public lookup


def collision_share(outcomes: list[Outcome], replicas: int, window: float = 0.15) -> float:
    """Share of served requests sent to a replica that got another request in the ``window`` before,
    while some replica got none: prompts stacked on one prefill with a replica idle (about one
    2.5k-token prefill, ~150 ms, on the simulators). Judged from the client's side, alike for
    every picker setup."""
    sent = sorted((o.sent_at, o.upstream) for o in outcomes if o.status == 200 and o.upstream)
    collisions = 0
    for i, (at, upstream) in enumerate(sent):
        recent = {u for t, u in sent[max(0, i - 64):i] if at - t < window}
        collisions += upstream in recent and len(recent) < replicas
    return collisions / len(sent) if sent else 0.0


def run_variant(workload: Workload, variant: Variant, replicas: int, rate: float, seconds: float,
                workdir: Path) -> dict[str, Any]:
    redis = RedisServer(workdir).start() if variant.shared else None
    picker_args = ["--log-level", "warning", *(["--state-store", redis.url] if redis else []), *variant.picker_args]
    stack: Stack
    if variant.pickers > 1:
        stack = MultiPickerStack(workdir, replicas, variant.pickers, sim_args=workload.sim_args,
                                 picker_args=picker_args, routed_pickers=variant.routed)
    else:
        stack = Stack(workdir, replicas, sim_args=workload.sim_args, picker_args=picker_args)
    try:
        stack.start()
        pickers = [p.pid for p in getattr(stack, "pickers", None) or [stack.picker]]  # type: ignore[union-attr]
        cpu_before = cpu_seconds(pickers)
        # Reading INFO costs a connection's own commands and bytes: measured once, subtracted.
        overhead = store_before = None
        if redis is not None:
            first = redis.traffic()
            store_before = redis.traffic()
            overhead = store_before - first
        outcomes, _ = asyncio.run(run_open_loop(stack.url + workload.path, workload.requests, rate, seconds * 3))
        picker_cpu = cpu_seconds(pickers) - cpu_before
        store: StoreTraffic | None = None
        if redis is not None and store_before is not None and overhead is not None:
            store = redis.traffic() - store_before - overhead
    finally:
        stack.stop()
        if redis is not None:
            redis.stop()
    result = summarize(outcomes, seconds)
    result["collision_share"] = collision_share(outcomes, replicas)
    served = max(1, result["requests"] - result["errors"])
    result["picker_cpu_ms_per_request"] = picker_cpu / served * 1e3
    if store is not None:
        result["store_commands_per_request"] = store.commands / served
        result["store_bytes_in_per_request"] = store.bytes_in / served
        result["store_bytes_out_per_request"] = store.bytes_out / served
    return result
