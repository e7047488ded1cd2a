"""The gateway's maximum requests/s with 1 and N picker workers: an open-loop rate sweep.

Small requests (a short prompt, 4 output tokens, simulators at a small time scale) so the
gateway, not the model servers, is what saturates. Each step offers one rate for a fixed
time; the highest rate served at >= 95% of the offer with < 1% errors is the maximum. Every
part shares this machine's cores, so the CPU each used (as cores: CPU seconds per wall
second) is reported beside the rate: Envoy, the load generator (this process), the
simulators and the picker (supervisor and workers).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.loadgen import percentile, run_open_loop
from benchmarks.scaleout.procstats import cpu_seconds, own_cpu_seconds
from epp.devstack.stack import Stack
from epp.devstack.workers import WorkersStack

__all__ = ["sweep"]

_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
_SIM_ARGS = ["--time-scale", "0.01", "--max-num-seqs", "256"]
_SUSTAINED = 0.95
_MAX_ERROR_SHARE = 0.01


def _body(i: int) -> bytes:
    return json.dumps({"model": _MODEL, "prompt": f"Request {i}: say something short.", "max_tokens": 4}).encode()


def _picker_pids(stack: Stack) -> list[int]:
    assert stack.picker is not None
    pids = [stack.picker.pid]
    if isinstance(stack, WorkersStack):
        pids += [w["pid"] for w in stack.worker_states() if w["pid"] is not None]
    return pids


def _step(stack: Stack, rate: float, seconds: float) -> dict[str, Any]:
    assert stack.envoy is not None
    groups = {"envoy": [stack.envoy.pid], "sims": [s.pid for s in stack.sims], "picker": _picker_pids(stack)}
    before = {name: cpu_seconds(pids) for name, pids in groups.items()}
    own = own_cpu_seconds()
    requests = [("", _body(i)) for i in range(int(rate * seconds))]
    start = time.monotonic()
    outcomes, _ = asyncio.run(run_open_loop(stack.url + "/v1/completions", requests, rate, seconds * 2))
    wall = time.monotonic() - start
    cores = {name: (cpu_seconds(pids) - before[name]) / wall for name, pids in groups.items()}
    cores["loadgen"] = (own_cpu_seconds() - own) / wall
    ok = [o for o in outcomes if o.status == 200]
    span = (max(o.sent_at + o.latency for o in ok) - min(o.sent_at for o in ok)) if ok else wall
    achieved = len(ok) / span if span > 0 else 0.0
    errors = len(outcomes) - len(ok)
    return {"offered": rate, "achieved": achieved, "errors": errors,
            "p50_ms": percentile([o.latency for o in ok], 50) * 1e3 if ok else None,
            "p90_ms": percentile([o.latency for o in ok], 90) * 1e3 if ok else None,
            "sustained": achieved >= _SUSTAINED * rate and errors <= _MAX_ERROR_SHARE * max(1, len(outcomes)),
            "cores": cores}


def sweep(workers: int, rates: Sequence[float], seconds: float, workdir: Path, replicas: int = 2) -> dict[str, Any]:
    """Steps at increasing rates until one is not sustained; ``max_rps`` is the last sustained one's achieved rate."""
    picker_args = ["--log-level", "warning"]
    stack: Stack = (WorkersStack(workdir, replicas, workers, sim_args=_SIM_ARGS, picker_args=picker_args)
                    if workers > 1 else Stack(workdir, replicas, sim_args=_SIM_ARGS, picker_args=picker_args))
    steps: list[dict[str, Any]] = []
    try:
        stack.start()
        asyncio.run(run_open_loop(stack.url + "/v1/completions", [("", _body(i)) for i in range(50)], 50, 5))  # warm-up
        for rate in rates:
            steps.append(_step(stack, rate, seconds))
            if not steps[-1]["sustained"]:
                break
    finally:
        stack.stop()
    sustained = [s for s in steps if s["sustained"]]
    return {"workers": workers, "steps": steps, "max_rps": max((s["achieved"] for s in sustained), default=0.0)}
