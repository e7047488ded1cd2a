"""A whole local stack: N simulated model servers, the picker and real Envoy, on loopback.

``Stack.start()`` brings the parts up in dependency order and waits for each to be ready
(simulators print a ready line; the picker answers ``/readyz``; Envoy answers its admin
``/ready``). The pool is a watched pool file in the work directory, so tests can change
membership while the stack runs (``write_pool``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from epp.devstack.envoy import envoy_binary, render_bootstrap, repo_bootstrap_path
from epp.devstack.processes import ManagedProcess, epp_command, free_port, wait_for_http

__all__ = ["Stack", "StackPorts"]


@dataclass(slots=True)
class StackPorts:
    envoy: int
    envoy_admin: int
    grpc: int
    grpc_health: int
    metrics: int
    sims: list[int] = field(default_factory=list)

    @classmethod
    def free(cls, replicas: int) -> StackPorts:
        return cls(free_port(), free_port(), free_port(), free_port(), free_port(),
                   [free_port() for _ in range(replicas)])

    @classmethod
    def defaults(cls, replicas: int) -> StackPorts:
        """The ports the README and config/envoy.yaml use."""
        return cls(8081, 19000, 9002, 9003, 9090, [8001 + i for i in range(replicas)])


class Stack:
    def __init__(
        self,
        workdir: Path,
        replicas: int = 3,
        ports: StackPorts | None = None,
        sim_args: Sequence[str] = (),
        picker_args: Sequence[str] = (),
        config_text: str | None = None,
        envoy_template: Path | None = None,
        extra_http_filters: list[dict[str, Any]] | None = None,
        host: str = "127.0.0.1",
        sim_hosts: Sequence[str] | None = None,
        envoy_options: dict[str, Any] | None = None,
    ) -> None:
        """``sim_hosts``: the loopback address of each simulator (default: all on ``host``),
        e.g. several ports of one IP as the data-parallel ranks of one pod.
        ``envoy_options``: keyword options of ``render_bootstrap`` (header stripping,
        served-endpoint reporting, fail-open)."""
        self.workdir = workdir
        self.replicas = replicas
        self.ports = ports or StackPorts.free(replicas)
        self.sim_args = list(sim_args)
        self.picker_args = list(picker_args)
        self.config_text = config_text
        self.envoy_template = envoy_template or repo_bootstrap_path()
        self.extra_http_filters = extra_http_filters
        self.host = host
        self.sim_hosts = list(sim_hosts) if sim_hosts is not None else [host] * replicas
        if len(self.sim_hosts) != replicas:
            raise ValueError(f"sim_hosts has {len(self.sim_hosts)} addresses for {replicas} replicas")
        if sim_hosts is not None and ports is None:
            self.ports.sims = [free_port(h) for h in self.sim_hosts]
        self.envoy_options = dict(envoy_options or {})
        self.sims: list[ManagedProcess] = []
        self.picker: ManagedProcess | None = None
        self.envoy: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.ports.envoy}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.ports.metrics}"

    @property
    def pool_file(self) -> Path:
        return self.workdir / "pool.yaml"

    def sim_hostport(self, i: int) -> str:
        return f"{self.sim_hosts[i]}:{self.ports.sims[i]}"

    def write_pool(self, replicas: Sequence[int] | None = None) -> None:
        """Make the pool the given simulator indexes (all by default); the picker reloads it."""
        chosen = range(self.replicas) if replicas is None else replicas
        doc = {"endpoints": [{"name": f"sim-{i}", "address": self.sim_hosts[i], "port": self.ports.sims[i],
                              **({"labels": labels} if (labels := self.replica_labels(i)) else {})}
                             for i in chosen]}
        tmp = self.pool_file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc))
        tmp.replace(self.pool_file)

    def replica_args(self, index: int) -> list[str]:
        """More ``epp sim`` flags for one replica (a subclass gives replicas different speeds, ...)."""
        return []

    def replica_labels(self, index: int) -> dict[str, str]:
        """Pool-file labels for one replica (e.g. where it publishes KV events)."""
        return {}

    def start_sims(self) -> None:
        # One process per replica so a test can stop or freeze one of them for real.
        for i, port in enumerate(self.ports.sims):
            sim = ManagedProcess(f"sim-{i}", epp_command("sim", "--host", self.sim_hosts[i], "--port", str(port),
                                                         "--seed", str(i), *self.sim_args, *self.replica_args(i)),
                                 self.workdir / f"sim-{i}.log")
            self.sims.append(sim.start())
        for sim in self.sims:
            sim.wait_for_line("epp-sim ready", timeout=60)

    def start_picker(self) -> None:
        self.write_pool()
        # The admin server has its own bind address (loopback by default); keep it beside ext_proc here.
        args = ["serve", "--bind", self.host, "--admin-bind", self.host, "--grpc-port", str(self.ports.grpc),
                "--grpc-health-port", str(self.ports.grpc_health), "--metrics-port", str(self.ports.metrics),
                "--pool-file", str(self.pool_file), *self.picker_args]
        if self.config_text is not None:
            config = self.workdir / "epp-config.yaml"
            config.write_text(self.config_text)
            args += ["--config-file", str(config)]
        self.picker = ManagedProcess("epp", epp_command(*args), self.workdir / "epp.log").start()
        wait_for_http(f"{self.admin_url}/readyz", 60, self.picker)

    def start_envoy(self) -> None:
        bootstrap = self.workdir / "envoy.yaml"
        bootstrap.write_text(render_bootstrap(self.envoy_template, self.ports.envoy, self.ports.envoy_admin,
                                              self.ports.grpc, self.extra_http_filters, self.host,
                                              **self.envoy_options))
        argv = [envoy_binary(), "-c", str(bootstrap), "--concurrency", "1", "--log-level", "warning",
                "--base-id", str(self.ports.envoy_admin)]
        self.envoy = ManagedProcess("envoy", argv, self.workdir / "envoy.log").start()
        wait_for_http(f"http://127.0.0.1:{self.ports.envoy_admin}/ready", 60, self.envoy)

    def start(self) -> Stack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_sims()
            self.start_picker()
            self.start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in (self.envoy, self.picker, *self.sims):
            if process is not None:
                process.stop()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
