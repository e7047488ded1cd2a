"""The routers compared, each started in front of a fresh set of simulators.

A contestant gets the ``Stack`` whose simulators are already up and returns a ``Running``:
the URL clients send to and the processes whose CPU counts as the router's. A contestant
that cannot run here (a peer not installed, a config file not written yet) says why with
``missing()``, and the harness reports it instead of failing.
"""

from __future__ import annotations

import json
import time
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.compare.setup import VENV, peer_executable
from benchmarks.overhead.__main__ import direct_bootstrap, start_envoy
from epp.devstack.envoy import repo_bootstrap_path
from epp.devstack.processes import ManagedProcess, StartupError, free_port, wait_for_http
from epp.devstack.stack import Stack

__all__ = ["CONTESTANTS", "Contestant", "EnvoyRoundRobin", "PeerRouter", "PickerBehindEnvoy", "Running",
           "default_contestants"]

FAST_ENVOY_CONFIG = repo_bootstrap_path().with_name("envoy-fast.yaml")


@dataclass
class Running:
    url: str
    # role ("router", "envoy", "picker") -> process; their CPU is the router's cost
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    stop: Callable[[], object] = lambda: None

    def crashed(self) -> str | None:
        """The first process that exited on its own, with its log tail."""
        for role, process in self.processes.items():
            code = process.poll()
            if code is not None:
                return f"{role} exited with {code}:\n{process.log_tail(15)}"
        return None


class Contestant(ABC):
    name: str
    description: str

    def missing(self) -> str | None:
        """Why this contestant cannot run here, or ``None``."""
        return None

    @abstractmethod
    def start(self, stack: Stack) -> Running:
        """Start in front of ``stack``'s simulators (running) and wait until it routes to all of them."""


class EnvoyRoundRobin(Contestant):
    name = "round-robin"
    description = "Envoy alone, ROUND_ROBIN over the replicas (no picker)"

    def start(self, stack: Stack) -> Running:
        listen, admin = free_port(), free_port()
        envoy = start_envoy(stack.workdir, self.name, direct_bootstrap(listen, admin, stack.ports.sims), admin)
        return Running(f"http://127.0.0.1:{listen}", {"envoy": envoy}, envoy.stop)


class PickerBehindEnvoy(Contestant):
    def __init__(self, name: str, envoy_template: Path, description: str, config_text: str | None = None) -> None:
        self.name = name
        self.envoy_template = envoy_template
        self.description = description
        self.config_text = config_text

    def missing(self) -> str | None:
        if not self.envoy_template.exists():
            return f"{self.envoy_template} does not exist (yet)"
        return None

    def start(self, stack: Stack) -> Running:
        stack.envoy_template = self.envoy_template
        stack.config_text = self.config_text
        stack.start_picker()
        stack.start_envoy()
        assert stack.picker is not None and stack.envoy is not None
        return Running(stack.url, {"picker": stack.picker, "envoy": stack.envoy})  # stack.stop() stops them


@dataclass(frozen=True)
class _PeerFlavour:
    package: str
    subcommand: tuple[str, ...]
    log_level: str
    workers_path: str

    def registered(self, body: bytes) -> int:
        doc = json.loads(body)
        return len(doc["urls"]) if "urls" in doc else int(doc.get("total", 0))


_FLAVOURS = {
    # sglang-router registers workers in the background after /health answers; /workers shows them.
    "sglang-router": _PeerFlavour("sglang-router", ("launch",), "warn", "/workers"),
    "vllm-router": _PeerFlavour("vllm-router", (), "warning", "/list_workers"),
}


class PeerRouter(Contestant):
    def __init__(self, package: str, policy: str, venv_dir: Path = VENV) -> None:
        self.flavour = _FLAVOURS[package]
        self.policy = policy
        self.venv_dir = venv_dir
        self.name = f"{package.removesuffix('-router')}-{policy.replace('_', '-')}"
        self.description = f"{package} --policy {policy} (from PyPI, in {venv_dir.name})"

    def missing(self) -> str | None:
        return peer_executable(self.flavour.package, self.venv_dir)[1] or None

    def start(self, stack: Stack) -> Running:
        executable, why = peer_executable(self.flavour.package, self.venv_dir)
        if executable is None:
            raise StartupError(why)
        port, prometheus = free_port(), free_port()
        workers = [f"http://{stack.sim_hostport(i)}" for i in range(stack.replicas)]
        argv = [str(executable), *self.flavour.subcommand, "--host", "127.0.0.1", "--port", str(port),
                "--worker-urls", *workers, "--policy", self.policy, "--prometheus-host", "127.0.0.1",
                "--prometheus-port", str(prometheus), "--log-level", self.flavour.log_level]
        router = ManagedProcess(self.name, argv, stack.workdir / f"{self.name}.log").start()
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_http(f"{url}/health", 30, router)
            self._wait_for_workers(url, len(workers), router)
        except BaseException:
            router.stop()
            raise
        return Running(url, {"router": router}, router.stop)

    def _wait_for_workers(self, url: str, count: int, router: ManagedProcess, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            with urllib.request.urlopen(url + self.flavour.workers_path, timeout=2) as response:
                seen = self.flavour.registered(response.read())
            if seen >= count:
                return
            time.sleep(0.1)
        raise StartupError(f"{self.name}: {seen}/{count} workers registered after {timeout:g}s\n{router.log_tail()}")


def default_contestants() -> list[Contestant]:
    return [
        EnvoyRoundRobin(),
        PickerBehindEnvoy("picker", repo_bootstrap_path(), "epp serve (built-in default profile) behind Envoy, "
                          "config/envoy.yaml"),
        PickerBehindEnvoy("picker-fast", FAST_ENVOY_CONFIG, "epp serve (default profile) behind Envoy, "
                          "config/envoy-fast.yaml (the recommended fast config)"),
        PeerRouter("sglang-router", "cache_aware"),
        PeerRouter("sglang-router", "power_of_two"),
        PeerRouter("vllm-router", "cache_aware"),
        PeerRouter("vllm-router", "round_robin"),
    ]


CONTESTANTS = [c.name for c in default_contestants()]
