"""Router variants with several picker processes behind one Envoy (``<router>-2pickers``).

Envoy's ``ext_proc`` cluster lists every picker and balances its gRPC streams (one per
request) round robin, as a gateway does in front of a scaled-out EPP Deployment. Each
picker's approximate prefix index then sees only its share of the routing decisions,
while a precise index reads every replica's own KV events, whichever picker routed.

With KV events, every simulator binds its own PUB socket (``--kv-events``, named in the
pool file by the ``kv-events-endpoint`` label) and every picker connects to all of them
(``discoverPods: true``): a bound picker socket could serve only one picker.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from epp.devstack.envoy import envoy_binary, render_bootstrap
from epp.devstack.processes import ManagedProcess, epp_command, free_port, wait_for_http
from epp.devstack.stack import Stack

__all__ = ["MultiPickerStack", "connect_mode", "split_router"]

_SUFFIX = re.compile(r"^(?P<base>.+)-(?P<count>[2-9])pickers$")


def split_router(router: str) -> tuple[str, int]:
    """``"precise-2pickers"`` -> ``("precise", 2)``; any other name -> ``(name, 1)``."""
    found = _SUFFIX.match(router)
    return (found["base"], int(found["count"])) if found else (router, 1)


def connect_mode(config: str) -> str:
    """A precise config whose pickers connect to each replica's publisher (the pool label) instead of binding."""
    doc = yaml.safe_load(config)
    for plugin in doc["plugins"]:
        if plugin["type"] == "precise-prefix-cache-scorer":
            events = plugin["parameters"]["kvEventsConfig"]
            events.update({"discoverPods": True, "topicFilter": ""})
            events.pop("zmqEndpoint", None)
    return str(yaml.safe_dump(doc))


class MultiPickerStack(Stack):
    """A ``Stack`` with ``pickers`` picker processes; ``picker``/``admin_url`` are the first one's.

    ``routed_pickers``: how many of them Envoy sends requests to (default all); the rest run
    (scrape, replicate) without routing, to tell their CPU cost from their decisions.
    """

    def __init__(self, workdir: Path, replicas: int, pickers: int, kv_events: bool = False,
                 routed_pickers: int | None = None, **kwargs: Any) -> None:
        super().__init__(workdir, replicas, **kwargs)
        self.picker_count = pickers
        self.routed_pickers = pickers if routed_pickers is None else routed_pickers
        self.pickers: list[ManagedProcess] = []
        # (grpc, grpc health, metrics) per picker; the first reuses the stack's own ports.
        self.picker_ports = [(self.ports.grpc, self.ports.grpc_health, self.ports.metrics)]
        self.picker_ports += [(free_port(), free_port(), free_port()) for _ in range(pickers - 1)]
        self.kv_ports = [free_port() for _ in range(replicas)] if kv_events else []

    def replica_args(self, index: int) -> list[str]:
        return ["--kv-events", f"tcp://127.0.0.1:{self.kv_ports[index]}"] if self.kv_ports else []

    def replica_labels(self, index: int) -> dict[str, str]:
        return {"kv-events-endpoint": f"tcp://127.0.0.1:{self.kv_ports[index]}"} if self.kv_ports else {}

    @property
    def admin_urls(self) -> list[str]:
        return [f"http://{self.host}:{metrics}" for _, _, metrics in self.picker_ports]

    def start_picker(self) -> None:
        self.write_pool()
        config_args: list[str] = []
        if self.config_text is not None:
            config = self.workdir / "epp-config.yaml"
            config.write_text(self.config_text)
            config_args = ["--config-file", str(config)]
        for i, (grpc, health, metrics) in enumerate(self.picker_ports):
            args = ["serve", "--bind", self.host, "--admin-bind", self.host, "--grpc-port", str(grpc),
                    "--grpc-health-port", str(health), "--metrics-port", str(metrics),
                    "--pool-file", str(self.pool_file), *self.picker_args, *config_args]
            process = ManagedProcess(f"epp-{i}", epp_command(*args), self.workdir / f"epp-{i}.log").start()
            self.pickers.append(process)
        for process, url in zip(self.pickers, self.admin_urls, strict=True):
            wait_for_http(f"{url}/readyz", 60, process)
        self.picker = self.pickers[0]

    def start_envoy(self) -> None:
        doc = yaml.safe_load(render_bootstrap(self.envoy_template, self.ports.envoy, self.ports.envoy_admin,
                                              self.ports.grpc, self.extra_http_filters, self.host,
                                              **self.envoy_options))
        for cluster in doc["static_resources"]["clusters"]:
            if cluster["name"] == "ext_proc":
                cluster["lb_policy"] = "ROUND_ROBIN"
                cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
                    {"endpoint": {"address": {"socket_address": {"address": self.host, "port_value": grpc}}}}
                    for grpc, _, _ in self.picker_ports[:self.routed_pickers]]
        bootstrap = self.workdir / "envoy.yaml"
        bootstrap.write_text(yaml.safe_dump(doc, sort_keys=False))
        argv = [envoy_binary(), "-c", str(bootstrap), "--concurrency", "1", "--log-level", "warning",
                "--base-id", str(self.ports.envoy_admin)]
        self.envoy = ManagedProcess("envoy", argv, self.workdir / "envoy.log").start()
        wait_for_http(f"http://127.0.0.1:{self.ports.envoy_admin}/ready", 60, self.envoy)

    def stop(self) -> None:
        for process in (self.envoy, *self.pickers, *self.sims):
            if process is not None:
                process.stop()
