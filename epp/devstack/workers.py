"""A stack whose picker is ``epp serve --workers N`` behind Envoy with every worker a member
of the ext_proc cluster (``config/envoy-workers.yaml``), for tests and benchmarks."""

from __future__ import annotations

import json
import random
import socket
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from epp.devstack.envoy import envoy_binary, render_bootstrap
from epp.devstack.processes import ManagedProcess, StartupError, wait_for_http
from epp.devstack.stack import Stack

__all__ = ["WorkersStack", "free_port_range", "list_extproc_members", "workers_bootstrap_path"]


def workers_bootstrap_path() -> Path:
    return Path(__file__).resolve().parents[2] / "config" / "envoy-workers.yaml"


def free_port_range(count: int, host: str = "127.0.0.1", attempts: int = 50) -> int:
    """The first of ``count`` consecutive ports that were all free a moment ago."""
    rng = random.Random()
    for _ in range(attempts):
        # Below Linux's ephemeral range (32768 up), where free_port's other ports come from.
        base = rng.randrange(20000, 32000 - count)
        with ExitStack() as held:
            try:
                for port in range(base, base + count):
                    sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind((host, port))
            except OSError:
                continue
            return base
    raise OSError(f"no {count} consecutive free ports on {host} after {attempts} tries")


def list_extproc_members(bootstrap: str, host: str, ports: Sequence[int]) -> str:
    """``bootstrap`` (YAML) with the ext_proc cluster's members replaced by ``host:port`` for each port."""
    doc = yaml.safe_load(bootstrap)
    for cluster in doc["static_resources"]["clusters"]:
        if cluster["name"] == "ext_proc":
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
                {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
                for port in ports]
    return str(yaml.safe_dump(doc, sort_keys=False))


class WorkersStack(Stack):
    """A ``Stack`` whose one picker command supervises ``workers`` worker processes; ``picker`` is the supervisor."""

    def __init__(self, workdir: Path, replicas: int, workers: int, **kwargs: Any) -> None:
        kwargs.setdefault("envoy_template", workers_bootstrap_path())
        super().__init__(workdir, replicas, **kwargs)
        self.workers = workers
        self.ports.grpc = free_port_range(workers, self.host)

    @property
    def worker_grpc_ports(self) -> list[int]:
        return [self.ports.grpc + i for i in range(self.workers)]

    def start_picker(self) -> None:
        self.picker_args = ["--workers", str(self.workers), *self.picker_args]
        super().start_picker()  # returns once one worker is ready
        _wait_for(lambda: all(w["ready"] for w in self.worker_states()), 60, "every picker worker ready", self.picker)

    def worker_states(self) -> list[dict[str, Any]]:
        """The supervisor's ``/debug/workers``: pid, ports, readiness and restarts of each worker."""
        with urllib.request.urlopen(self.admin_url + "/debug/workers", timeout=5) as response:
            workers: list[dict[str, Any]] = json.loads(response.read())["workers"]
        return workers

    def healthy_extproc_members(self) -> int:
        """Members of Envoy's ext_proc cluster that Envoy considers healthy."""
        url = f"http://127.0.0.1:{self.ports.envoy_admin}/stats?filter=^cluster\\.ext_proc\\.membership_healthy$"
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.read().decode().split(":")[1])

    def start_envoy(self) -> None:
        rendered = render_bootstrap(self.envoy_template, self.ports.envoy, self.ports.envoy_admin, self.ports.grpc,
                                    self.extra_http_filters, self.host, **self.envoy_options)
        bootstrap = self.workdir / "envoy.yaml"
        bootstrap.write_text(list_extproc_members(rendered, self.host, self.worker_grpc_ports))
        argv = [envoy_binary(), "-c", str(bootstrap), "--concurrency", "1", "--log-level", "warning",
                "--base-id", str(self.ports.envoy_admin)]
        self.envoy = ManagedProcess("envoy", argv, self.workdir / "envoy.log").start()
        wait_for_http(f"http://127.0.0.1:{self.ports.envoy_admin}/ready", 60, self.envoy)
        # A worker that was not ready at Envoy's first health check joins at the next one.
        _wait_for(lambda: self.healthy_extproc_members() == self.workers, 30, "every worker healthy in Envoy",
                  self.envoy)


def _wait_for(check: Callable[[], bool], timeout: float, what: str, process: ManagedProcess | None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if process is not None and process.poll() is not None:
            raise StartupError(f"{process.name} exited with {process.poll()}:\n{process.log_tail()}")
        if time.monotonic() > deadline:
            raise StartupError(f"{what}: not after {timeout:g}s")
        time.sleep(0.1)

