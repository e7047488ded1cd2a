"""``PickerServer``: builds the picker from options and owns its servers and background tasks.

Start-up order: pool (fails fast on a bad pool file) → config (fails fast on a bad
config) → director → ext_proc gRPC server (+ health) → health server → admin HTTP server
→ background tasks (collector, pool-file watcher) → readiness SERVING.

Shutdown (``stop``): readiness NOT_SERVING; for ``shutdown_delay`` the picker keeps
serving new streams while health checks and load balancers notice; then the gRPC server
stops accepting streams and in-flight streams get up to ``shutdown_grace_period`` to
finish; then background tasks are cancelled and data sources closed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2_grpc

from epp.config.loader import PickerConfig, load_config
from epp.datalayer.collector import Collector
from epp.datalayer.pool import EndpointPool
from epp.datalayer.poolsource import PoolFileWatcher, parse_endpoint_list
from epp.director import Director
from epp.errors import ConfigError
from epp.framework.plugin import Handle
from epp.framework.registry import Registry
from epp.metrics import PickerMetrics
from epp.plugins import default_registry
from epp.scheduling.trace import DecisionLog
from epp.server.admin import build_admin_app
from epp.server.extproc import ExtProcServicer
from epp.server.health import HealthState

__all__ = ["PickerServer", "ServeOptions"]

log = logging.getLogger("epp")

# Envoy sends a BUFFERED body as one message; allow large prompts through gRPC.
_GRPC_MAX_MESSAGE = 256 * 1024 * 1024


@dataclass(slots=True, kw_only=True)
class ServeOptions:
    bind: str = "127.0.0.1"
    grpc_port: int = 9002
    grpc_health_port: int = 9003
    metrics_port: int = 9090
    config_file: Path | None = None
    config_text: str | None = None
    endpoints: str | None = None
    pool_file: Path | None = None
    pool_name: str = "default"
    refresh_metrics_interval: float = 0.05
    scrape_timeout: float = 1.0
    unready_after_failures: int = 3
    honor_subset_hint: bool = True
    max_request_body_bytes: int = 64 * 1024 * 1024
    decision_log_size: int = 256
    account_dispatches: bool = True
    shutdown_grace_period: float = 30.0
    shutdown_delay: float = 0.0
    seed: int | None = None


class PickerServer:
    def __init__(self, options: ServeOptions, registry: Registry | None = None) -> None:
        self.options = options
        self.registry = registry or default_registry()
        self.pool = EndpointPool(options.pool_name)
        self.metrics = PickerMetrics(self.pool)
        self.health = HealthState()
        self.decisions = DecisionLog(options.decision_log_size)
        self.config: PickerConfig | None = None
        self.director: Director | None = None
        self.collector: Collector | None = None
        self.grpc_port = 0
        self.grpc_health_port = 0
        self.metrics_port = 0
        self._watcher: PoolFileWatcher | None = None
        self._servers: list[grpc.aio.Server] = []
        self._admin: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _load_pool(self) -> None:
        opts = self.options
        if opts.pool_file is not None and opts.endpoints:
            raise ConfigError("--pool-file", "give either --pool-file or --endpoints, not both")
        if opts.pool_file is not None:
            self._watcher = PoolFileWatcher(opts.pool_file, self.pool)
            self._watcher.load()
        elif opts.endpoints:
            self.pool.replace_all(parse_endpoint_list(opts.endpoints))
        else:
            raise ConfigError("--endpoints", "no endpoint pool: give --endpoints ip:port,... or --pool-file FILE")

    def _config_text(self) -> str | None:
        opts = self.options
        if opts.config_file is not None and opts.config_text:
            raise ConfigError("--config-file", "give either --config-file or --config-text, not both")
        if opts.config_file is not None:
            try:
                return opts.config_file.read_text()
            except OSError as exc:
                raise ConfigError("--config-file", f"cannot read {opts.config_file}: {exc.strerror}") from exc
        return opts.config_text

    def _check_options(self) -> None:
        opts = self.options
        for flag, value in (("--refresh-metrics-interval", opts.refresh_metrics_interval),
                            ("--scrape-timeout", opts.scrape_timeout)):
            if value <= 0:
                raise ConfigError(flag, "must be greater than zero", value)
        if opts.unready_after_failures < 1:
            raise ConfigError("--unready-after-failures", "must be at least 1", opts.unready_after_failures)
        if opts.max_request_body_bytes < 1:
            raise ConfigError("--max-request-body-bytes", "must be at least 1", opts.max_request_body_bytes)

    def build(self) -> None:
        """Load pool and config; raises ``ConfigError`` before anything listens."""
        self._check_options()
        self._load_pool()
        rng = random.Random(self.options.seed)
        handle = Handle(pool=self.pool, rng=rng, metrics_registry=self.metrics.registry)
        self.config = load_config(self._config_text(), self.registry, handle, self.metrics.plugin_observer)
        self.director = Director(self.pool, self.config, self.metrics, rng, self.decisions,
                                 honor_subset_hint=self.options.honor_subset_hint,
                                 account_dispatches=self.options.account_dispatches)
        self.collector = Collector(self.pool, self.config.data_bindings, self.options.refresh_metrics_interval,
                                   self.options.scrape_timeout, self.options.unready_after_failures)

    def _grpc_server(self) -> grpc.aio.Server:
        return grpc.aio.server(options=[
            ("grpc.max_receive_message_length", _GRPC_MAX_MESSAGE),
            ("grpc.max_send_message_length", _GRPC_MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ])

    def _listen(self, server: grpc.aio.Server, port: int, what: str) -> int:
        bound = server.add_insecure_port(f"{self.options.bind}:{port}")
        if bound == 0:
            raise OSError(f"cannot listen for {what} on {self.options.bind}:{port}")
        return bound

    async def start(self) -> None:
        if self.director is None:
            self.build()
        assert self.director is not None and self.collector is not None
        await self.health.start()
        extproc = self._grpc_server()
        pb_grpc.add_ExternalProcessorServicer_to_server(
            ExtProcServicer(self.director, self.options.max_request_body_bytes), extproc)
        # Health on the ext_proc port too, so Envoy's gRPC health check can target it.
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, extproc)
        self.grpc_port = self._listen(extproc, self.options.grpc_port, "ext_proc")
        health = self._grpc_server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, health)
        self.grpc_health_port = self._listen(health, self.options.grpc_health_port, "gRPC health")
        for server in (extproc, health):
            await server.start()
            self._servers.append(server)
        app = build_admin_app(self.metrics, self.pool, self.decisions, self.collector, lambda: self.health.ready)
        self._admin = web.AppRunner(app, access_log=None)
        await self._admin.setup()
        site = web.TCPSite(self._admin, self.options.bind, self.options.metrics_port)
        await site.start()
        self.metrics_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._tasks.append(asyncio.create_task(self.collector.run(), name="collector"))
        if self._watcher is not None:
            self._tasks.append(asyncio.create_task(self._watcher.watch(), name="pool-file watcher"))
        await self.health.set_ready(True)
        log.info("ext_proc on %s:%d, gRPC health on :%d, admin http://%s:%d; %d endpoints; profiles: %s",
                 self.options.bind, self.grpc_port, self.grpc_health_port, self.options.bind, self.metrics_port,
                 len(self.pool.endpoints()), self.describe_profiles())

    def describe_profiles(self) -> str:
        assert self.config is not None
        parts = []
        for name, profile in self.config.scheduler.profiles.items():
            plugins = [f.typed_name.name for f in profile.filters]  # type: ignore[attr-defined]
            plugins += [f"{ws.scorer.typed_name.name}*{ws.weight:g}" for ws in profile.scorers]  # type: ignore[attr-defined]
            plugins.append(profile.picker.typed_name.name)  # type: ignore[attr-defined]
            parts.append(f"{name}[{', '.join(plugins)}]")
        return "; ".join(parts)

    async def stop(self, grace: float | None = None, delay: float = 0.0) -> None:
        grace = self.options.shutdown_grace_period if grace is None else grace
        await self.health.set_ready(False)
        if delay > 0:
            await asyncio.sleep(delay)
        await asyncio.gather(*(server.stop(grace) for server in self._servers))
        self._servers.clear()
        for task in self._tasks:
            task.cancel()
        _, stuck = await asyncio.wait(self._tasks, timeout=5.0) if self._tasks else (set(), set())
        for task in stuck:
            log.error("background task %s did not stop within 5 s; exiting anyway", task.get_name())
        self._tasks.clear()
        if self.config is not None:
            for binding in self.config.data_bindings:
                await binding.source.aclose()
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
