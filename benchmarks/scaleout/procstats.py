"""What the processes of a run used: CPU from /proc, and the shared store's traffic from Redis INFO."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from epp.devstack.processes import ManagedProcess, free_port

__all__ = ["RedisServer", "StoreTraffic", "cpu_seconds", "own_cpu_seconds"]

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU of these processes so far (a process that is gone counts 0)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def own_cpu_seconds() -> float:
    """This process's CPU (the load generator runs here)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True, slots=True)
class StoreTraffic:
    commands: int
    bytes_in: int
    bytes_out: int

    def __sub__(self, other: StoreTraffic) -> StoreTraffic:
        return StoreTraffic(self.commands - other.commands, self.bytes_in - other.bytes_in,
                            self.bytes_out - other.bytes_out)


class RedisServer:
    """A throw-away ``redis-server`` on a free loopback port, no persistence."""

    def __init__(self, workdir: Path, binary: str = "/usr/bin/redis-server") -> None:
        self.port = free_port()
        self.process = ManagedProcess("redis", [binary, "--port", str(self.port), "--bind", "127.0.0.1",
                                                "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                                      workdir / "redis.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process.start()
        self.process.wait_for_line("Ready to accept connections", timeout=20)
        return self

    def traffic(self) -> StoreTraffic:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            stats = client.info("stats")
        finally:
            client.close()
        return StoreTraffic(int(stats["total_commands_processed"]), int(stats["total_net_input_bytes"]),
                            int(stats["total_net_output_bytes"]))

    def stop(self) -> None:
        self.process.stop()
