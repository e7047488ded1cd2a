"""Run several replicas in one event loop until told to stop (what ``epp sim`` does).

Each replica prints exactly one readiness line once it listens, and flushes it, because
test harnesses wait for these lines::

    epp-sim ready http://127.0.0.1:8001 model=meta-llama/Llama-3.1-8B-Instruct engine=vllm

A replica that publishes KV events prints, just before its readiness line::

    epp-sim kv-events http://127.0.0.1:8001 pub=tcp://127.0.0.1:5557 replay=tcp://127.0.0.1:5567

SIGINT and SIGTERM stop every replica cleanly; the function then returns 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from typing import TextIO

from epp.sim.config import SimConfig
from epp.sim.server import SimServer

__all__ = ["readiness_line", "serve_replicas"]


def readiness_line(server: SimServer) -> str:
    """The line a harness waits for, without the newline."""
    config = server.config
    return f"epp-sim ready {server.url} model={config.model_name} engine={config.engine.value}"


async def serve_replicas(configs: Sequence[SimConfig], *, out: TextIO | None = None,
                         stop: asyncio.Event | None = None) -> int:
    """Start one ``SimServer`` per config, print their readiness lines, serve until stopped.

    Args:
        configs: one per replica; each needs its own host:port (port 0 picks a free one).
        out: where readiness lines go (stdout by default).
        stop: set it to stop; by default SIGINT / SIGTERM set it.

    Returns:
        0 after a clean stop.

    Raises:
        OSError: an address is taken (replicas already started are stopped first).
    """
    out = out if out is not None else sys.stdout
    loop = asyncio.get_running_loop()
    own_signals = stop is None
    stop = stop if stop is not None else asyncio.Event()
    if own_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    servers: list[SimServer] = []
    try:
        for config in configs:
            server = SimServer(config)
            await server.start()
            servers.append(server)
            if server.kv_events_endpoint is not None:
                out.write(f"epp-sim kv-events {server.url} pub={server.kv_events_endpoint} "
                          f"replay={server.kv_replay_endpoint or '-'}\n")
            out.write(readiness_line(server) + "\n")
            out.flush()
        await stop.wait()
    finally:
        for server in reversed(servers):
            await server.stop()
        if own_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
    return 0
