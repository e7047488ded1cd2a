"""What ``epp serve --workers N`` decides before it starts anything: ports, worker command lines, restart delays.

Topology: worker ``i`` serves ext_proc on its own port, ``--grpc-port + i``, and Envoy's
ext_proc cluster lists every worker (config/envoy-workers.yaml). Sharing one port with
SO_REUSEPORT was measured and rejected: the kernel balances *connections*, and Envoy keeps
one long-lived HTTP/2 connection per Envoy worker thread to the ext_proc cluster, so with
``--concurrency 1`` all 300 of 300 streams went to one picker process (with
``--concurrency 2``: 133/167, one connection each). As cluster members, each stream
(one per request) is balanced by Envoy's load balancer, and its health checks take a
dead or draining worker out of rotation.

The supervisor keeps ``--grpc-health-port`` and ``--metrics-port`` (the aggregate views);
each worker gets an ephemeral gRPC health port and an admin port the supervisor chose.
"""

from __future__ import annotations

import argparse
import socket
from dataclasses import dataclass

from epp.errors import ConfigError

__all__ = ["RestartBackoff", "WorkerSlot", "plan_workers", "worker_argv"]

# Flags the supervisor sets per worker; everything else passes through unchanged.
_SUPERVISOR_FLAGS = frozenset({"workers", "grpc_port", "grpc_health_port", "metrics_port", "worker_index"})


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    index: int
    grpc_port: int
    metrics_port: int
    # Where the supervisor reaches the worker's admin port: --admin-bind, or loopback for a wildcard.
    admin_host: str = "127.0.0.1"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def plan_workers(workers: int, grpc_port: int, grpc_health_port: int, metrics_port: int,
                 admin_bind: str = "127.0.0.1") -> list[WorkerSlot]:
    """One slot per worker: ext_proc on ``grpc_port + i``, admin on a port free now (kept across restarts)."""
    if workers < 1:
        raise ConfigError("--workers", "must be at least 1", workers)
    if not 0 < grpc_port <= 65535 - (workers - 1):
        raise ConfigError("--grpc-port", f"with --workers {workers} the ext_proc ports are --grpc-port + 0.."
                          f"{workers - 1}: give a fixed port that leaves room for them", grpc_port)
    extproc = range(grpc_port, grpc_port + workers)
    for flag, port in (("--grpc-health-port", grpc_health_port), ("--metrics-port", metrics_port)):
        if port in extproc:
            raise ConfigError(flag, f"collides with the workers' ext_proc ports {extproc[0]}-{extproc[-1]} "
                              f"(--grpc-port + worker index); move it past {extproc[-1]}", port)
    host = "127.0.0.1" if admin_bind in ("", "0.0.0.0") else "::1" if admin_bind == "::" else admin_bind
    return [WorkerSlot(i, grpc_port + i, _free_port(admin_bind), host) for i in range(workers)]


def worker_argv(parser: argparse.ArgumentParser, args: argparse.Namespace, slot: WorkerSlot) -> list[str]:
    """``epp serve`` arguments for one worker: every flag the user gave, plus the worker's own ports.

    Rebuilt from the parsed values (not the raw command line), so abbreviations and
    ``--flag=value`` forms need no special care, and a flag added later passes through
    without a change here. Durations are parsed to seconds, given back as ``<seconds>s``.
    """
    out: list[str] = []
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of a parser's options
        if not action.option_strings or action.dest in _SUPERVISOR_FLAGS or action.dest == "help":
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if isinstance(action, argparse._StoreConstAction):  # noqa: SLF001 - store_true, store_false, store_const
            out.append(flag)
        elif isinstance(value, float) and getattr(action.type, "__name__", "") == "_duration":
            out.append(f"{flag}={value!r}s")
        else:
            out.append(f"{flag}={value}")  # the "=" form also carries values that start with "-"
    return [*out, "--grpc-port", str(slot.grpc_port), "--grpc-health-port", "0",
            "--metrics-port", str(slot.metrics_port), "--worker-index", str(slot.index)]


class RestartBackoff:
    """Delay before restarting a worker that exited: ``initial`` doubling to ``maximum`` for
    crashes in a row; a worker that ran ``stable_after`` seconds before dying starts over at
    ``initial``. Times are passed in, so tests drive it with any clock."""

    def __init__(self, initial: float = 1.0, maximum: float = 30.0, stable_after: float = 60.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.stable_after = stable_after
        self._next = initial

    def delay(self, started_at: float, died_at: float) -> float:
        if died_at - started_at >= self.stable_after:
            self._next = self.initial
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay
