"""``PickerServer``: builds the picker from options and owns its servers and background tasks.

Start-up order: options → pool (fails fast on a bad pool file) → config (fails fast on a
bad config) → admin token and TLS credentials → director → ext_proc gRPC server (+ health)
→ health server → admin HTTP server on ``admin_bind`` → background tasks (collector,
pool-file and objectives-file watchers, the flow controller's dispatch loop) under one
``BackgroundTasks`` supervisor, and the readiness watch →
readiness SERVING once data is fresh: with scraping configured and a non-empty pool, some endpoint
had a successful scrape within ``max(3 × interval + scrape timeout, 2 s)``
(``epp.datalayer.collector.freshness_bound``; for an endpoint resting at the idle scrape
interval, the same bound of that interval). So readiness is NOT_SERVING until the
first good scrape, and again whenever the collector is dead or every endpoint unscrapable.

Shutdown (``stop``): readiness NOT_SERVING; for ``shutdown_delay`` the picker keeps
serving new streams while health checks and load balancers notice; then the gRPC server
stops accepting streams and in-flight streams get up to ``shutdown_grace_period`` to
finish; then background tasks are cancelled and awaited, and data sources closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2_grpc

from epp.config.loader import PickerConfig, load_config
from epp.datalayer.collector import Collector
from epp.datalayer.passive_health import EjectionPolicy, PassiveHealth, routable
from epp.datalayer.pool import EndpointPool
from epp.datalayer.poolsource import PoolFileWatcher, parse_endpoint_list
from epp.director import Director
from epp.errors import ConfigError
from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.objectives import ObjectivesFileWatcher, ObjectiveStore
from epp.flowcontrol.saturation import UtilizationDetector
from epp.flowcontrol.workloads import WorkloadRegistry
from epp.framework.plugin import BackgroundWork, Handle
from epp.framework.registry import Registry
from epp.metrics import FlowControlMetrics, PickerMetrics, PredictionMetrics
from epp.plugins import default_registry
from epp.plugins.prefix.producer import ApproxPrefixCacheProducer
from epp.plugins.slo.producer import PredictedLatencyProducer
from epp.scheduling.trace import DecisionLog
from epp.server.admin import build_admin_app
from epp.server.auth import TokenFile
from epp.server.extproc import ExtProcServicer
from epp.server.health import HealthState
from epp.server.middleware import AdminSettings
from epp.server.tls import server_credentials
from epp.sharedstate import SharedState, SharedStateSettings, build_shared_state, default_replica_id

__all__ = ["BackgroundTasks", "PickerServer", "ServeOptions"]

log = logging.getLogger("epp")

# Envoy sends a BUFFERED body as one message, so gRPC must admit the largest allowed body
# plus the headers and framing around it, and nothing more: anything larger would be
# received whole before the body-size check could refuse it.
_GRPC_MESSAGE_OVERHEAD = 1024 * 1024
# Health and other small services.
_GRPC_SMALL_MESSAGE = 4 * 1024 * 1024
# A crashed background task is restarted after this delay, doubling up to the cap.
_RESTART_DELAY = 1.0
_RESTART_DELAY_MAX = 30.0
# How often readiness re-checks data freshness (it changes with time, not with events).
_READINESS_PERIOD = 0.1


@dataclass(slots=True, kw_only=True)
class ServeOptions:
    bind: str = "127.0.0.1"
    admin_bind: str = "127.0.0.1"
    admin_token_file: Path | None = None
    secure_serving: bool = False
    cert_path: Path | None = None
    enable_cert_reload: bool = False
    grpc_port: int = 9002
    grpc_health_port: int = 9003
    metrics_port: int = 9090
    config_file: Path | None = None
    config_text: str | None = None
    endpoints: str | None = None
    pool_file: Path | None = None
    pool_name: str = "default"
    refresh_metrics_interval: float = 0.05
    # Idle endpoints are scraped this often instead (0: never back off). `epp serve` defaults
    # to 0.5 s; 0 here keeps tests that build options directly on the plain interval.
    idle_scrape_interval: float = 0.0
    scrape_timeout: float = 1.0
    unready_after_failures: int = 3
    honor_subset_hint: bool = True
    max_request_body_bytes: int = 64 * 1024 * 1024
    max_inflight_body_bytes: int = 1024 * 1024 * 1024
    honor_rewrite_header: bool = True
    honor_criticality_header: bool = True
    plain_errors: bool = False  # Go's text/plain error bodies instead of OpenAI's JSON error object
    objectives_file: Path | None = None
    decision_log_size: int = 256
    account_dispatches: bool = True
    shutdown_grace_period: float = 30.0
    shutdown_delay: float = 0.0
    seed: int | None = None
    eject_after_failures: int = 5
    ejection_time: float = 10.0
    max_ejection_percent: float = 50.0
    admin_rate_limit: float | None = 100.0
    admin_rate_burst: int = 200
    # Shared routing state between picker replicas (redis://host:port/db); None: each replica's own.
    state_store: str | None = None
    state_replica_id: str | None = None
    state_load_push: bool = True  # push each route's load change at once, besides the 200 ms rounds


class BackgroundTasks:
    """Supervises the server's long-running tasks: none of them may vanish silently.

    A task that raises, or is cancelled by anything but ``aclose``, is logged and
    restarted after a delay that doubles on each crash (the collector or the pool-file
    watcher must keep running for the picker to stay correct); ``aclose`` cancels every
    task and awaits them. ``current(name)`` is the running attempt, the task a crash ends.
    """

    def __init__(self, restart_delay: float = _RESTART_DELAY, restart_delay_max: float = _RESTART_DELAY_MAX) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._attempts: dict[str, asyncio.Task[None]] = {}
        self.crashes: dict[str, int] = {}
        self.restart_delay = restart_delay
        self.restart_delay_max = restart_delay_max

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        if name in self._tasks:
            raise ValueError(f"background task {name!r} already running")
        self.crashes[name] = 0
        self._tasks[name] = asyncio.create_task(self._supervise(name, run), name=name)

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        delay = self.restart_delay
        supervisor = asyncio.current_task()
        assert supervisor is not None
        while True:
            # A task of its own, so a cancellation aimed at it alone (not at the supervisor)
            # is seen for what it is: the work died and must come back.
            attempt = asyncio.ensure_future(run())
            self._attempts[name] = attempt
            try:
                await attempt
                return
            except asyncio.CancelledError:
                if supervisor.cancelling():
                    raise  # aclose: shutting down
                self.crashes[name] += 1
                log.error("background task %s was cancelled (%d crashes so far); restarting in %gs",
                          name, self.crashes[name], delay)
            except Exception:
                self.crashes[name] += 1
                log.exception("background task %s crashed (%d so far); restarting in %gs",
                              name, self.crashes[name], delay)
            finally:
                self._attempts.pop(name, None)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.restart_delay_max)

    def current(self, name: str) -> asyncio.Task[None] | None:
        return self._attempts.get(name)

    def running(self) -> list[str]:
        return [name for name, task in self._tasks.items() if not task.done()]

    async def aclose(self, timeout: float = 5.0) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, stuck = await asyncio.wait(tasks, timeout=timeout)
        for task in stuck:
            log.error("background task %s did not stop within %gs; exiting anyway", task.get_name(), timeout)


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
        self.objectives = ObjectiveStore()
        self._objectives_watcher: ObjectivesFileWatcher | None = None
        self.workloads = WorkloadRegistry()
        self.flow_controller: FlowController | None = None
        self._servers: list[grpc.aio.Server] = []
        self._extproc: ExtProcServicer | None = None
        self._admin: web.AppRunner | None = None
        self.tasks = BackgroundTasks()
        self._admin_token: TokenFile | None = None
        self._extproc_credentials: grpc.ServerCredentials | None = None
        self._transport = "plaintext"
        self._config_source: str | None = None
        self._admin_settings = AdminSettings()
        self.shared_state: SharedState | None = None

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
        if opts.idle_scrape_interval < 0:
            raise ConfigError("--idle-scrape-interval", "must be at least 0 (0 disables)", opts.idle_scrape_interval)
        if opts.unready_after_failures < 1:
            raise ConfigError("--unready-after-failures", "must be at least 1", opts.unready_after_failures)
        if opts.max_request_body_bytes < 1:
            raise ConfigError("--max-request-body-bytes", "must be at least 1", opts.max_request_body_bytes)
        if opts.max_request_body_bytes + _GRPC_MESSAGE_OVERHEAD > 2**31 - 1:
            # gRPC message limits are C ints.
            raise ConfigError("--max-request-body-bytes", f"must be at most {2**31 - 1 - _GRPC_MESSAGE_OVERHEAD}",
                              opts.max_request_body_bytes)
        # Below --max-request-body-bytes it also caps a single body (refused, not truncated): allowed.
        if opts.max_inflight_body_bytes < 1:
            raise ConfigError("--max-inflight-body-bytes", "must be at least 1", opts.max_inflight_body_bytes)
        if opts.eject_after_failures < 0:
            raise ConfigError("--eject-after-failures", "must be at least 0 (0 disables ejection)",
                              opts.eject_after_failures)
        if not opts.ejection_time > 0:
            raise ConfigError("--ejection-time", "must be greater than zero", opts.ejection_time)
        if not 0 < opts.max_ejection_percent <= 100:
            raise ConfigError("--max-ejection-percent", "must be in (0, 100]", opts.max_ejection_percent)
        if not opts.admin_bind:
            raise ConfigError("--admin-bind", "must be an address (127.0.0.1 keeps the admin server local)")
        if opts.cert_path is not None and not opts.secure_serving:
            raise ConfigError("--cert-path", "needs --secure-serving (without it ext_proc is plaintext)")
        if opts.enable_cert_reload and opts.cert_path is None:
            raise ConfigError("--enable-cert-reload", "needs --cert-path (a self-signed certificate never changes)")
        if opts.cert_path is not None and not opts.cert_path.is_dir():
            raise ConfigError("--cert-path", "must be a directory holding tls.crt and tls.key", str(opts.cert_path))
        self._admin_settings = AdminSettings(rate_limit=opts.admin_rate_limit, rate_burst=opts.admin_rate_burst)

    def _load_security(self) -> None:
        opts = self.options
        if opts.admin_token_file is not None:
            self._admin_token = TokenFile(opts.admin_token_file)
        if opts.secure_serving:
            self._extproc_credentials, self._transport = server_credentials(
                opts.cert_path, opts.enable_cert_reload, opts.bind)

    def build(self) -> None:
        """Load pool and config; raises ``ConfigError`` before anything listens."""
        self._check_options()
        self._load_pool()
        self._load_security()
        if self.options.objectives_file is not None:
            self._objectives_watcher = ObjectivesFileWatcher(self.options.objectives_file, self.objectives)
            self._objectives_watcher.load()
        rng = random.Random(self.options.seed)
        handle = Handle(pool=self.pool, rng=rng, metrics_registry=self.metrics.registry, workloads=self.workloads)
        self._config_source = self._config_text()
        self.config = load_config(self._config_source, self.registry, handle, self.metrics.plugin_observer)
        for producer in self._predictors():
            producer.on_predicted = PredictionMetrics(self.metrics).predicted
        if self.config.flow_control is not None:
            pool = self.pool
            self.flow_controller = FlowController(
                self.config.flow_control, self.config.saturation_detector,
                lambda: routable(pool.endpoints(), time.monotonic()), self.workloads,
                FlowControlMetrics(self.metrics, self.options.pool_name))
        self.director = Director(self.pool, self.config, self.metrics, rng, self.decisions,
                                 honor_subset_hint=self.options.honor_subset_hint,
                                 account_dispatches=self.options.account_dispatches,
                                 honor_rewrite_header=self.options.honor_rewrite_header,
                                 passive_health=self._passive_health(), flow_controller=self.flow_controller,
                                 objectives=self.objectives,
                                 honor_criticality_header=self.options.honor_criticality_header)
        scrape_errors = self.metrics.endpoint_scrape_errors
        self.collector = Collector(self.pool, self.config.data_bindings, self.options.refresh_metrics_interval,
                                   self.options.scrape_timeout, self.options.unready_after_failures,
                                   idle_interval=self._idle_scrape_interval(),
                                   on_scrape_error=lambda name: scrape_errors.labels(name).inc(),
                                   on_scraped=self.flow_controller.notify if self.flow_controller else None)
        self.health.fresh = self.collector.has_fresh_data
        if self.options.state_store:
            pool = self.pool
            self.shared_state = build_shared_state(
                self.options.state_store, self.options.pool_name,
                self.options.state_replica_id or default_replica_id(), self.config.plugins.values(),
                SharedStateSettings(load_push=self.options.state_load_push),
                is_member=lambda name: pool.get(name) is not None)

    def debug_state(self) -> dict[str, Any]:
        """The size of every per-key structure the picker holds (``/debug/state``): what a
        soak run watches to prove that nothing grows with the number of requests served."""
        now = time.monotonic()
        endpoints = self.pool.endpoints()
        plugins = self.config.plugins.values() if self.config is not None else ()
        return {
            "endpoints": len(endpoints),
            "ejectedEndpoints": sum(ep.ejected(now) for ep in endpoints),
            "requestBodyBytesHeld": self._extproc.budget.held if self._extproc is not None else 0,
            "observedRequests": len(self._extproc.observed) if self._extproc is not None else 0,
            "metrics": self.metrics.debug_sizes(),
            "flowControl": {"queuedRequests": self.flow_controller.queued_requests,
                            "queuedBytes": self.flow_controller.queued_bytes} if self.flow_controller else None,
            "workloads": len(self.workloads),
            "objectives": len(self.objectives),
            "decisionLog": self.decisions.debug_sizes(),
            "sharedState": self.shared_state.snapshot() if self.shared_state is not None else None,
            "plugins": {str(p.typed_name): p.debug_sizes() for p in plugins if hasattr(p, "debug_sizes")},
        }

    def endpoint_details(self, name: str) -> dict[str, Any]:
        """Per-endpoint state plugins keep (``/debug/endpoints``): e.g. ``kvEvents`` of the precise prefix scorer."""
        plugins = self.config.plugins.values() if self.config is not None else ()
        details: dict[str, Any] = {}
        for plugin in plugins:
            stats = getattr(plugin, "endpoint_stats", None)
            if callable(stats):
                details["kvEvents"] = stats(name)
        return details

    def _idle_scrape_interval(self) -> float | None:
        """The idle backoff, kept short enough that no utilization detector (flow control's,
        the legacy shedding rule's, or one used as a filter) sees a resting endpoint's metrics
        as stale: stale counts as saturated there, and as a filter it would starve idle
        endpoints of the very requests that wake them."""
        opts = self.options
        if not opts.idle_scrape_interval or not opts.account_dispatches:
            return None  # only this picker's dispatches wake an idle endpoint
        assert self.config is not None
        idle = opts.idle_scrape_interval
        for plugin in (self.config.saturation_detector, *self.config.plugins.values()):
            if isinstance(plugin, UtilizationDetector):
                idle = min(idle, plugin.params.metrics_staleness_threshold - opts.refresh_metrics_interval)
        if idle <= opts.refresh_metrics_interval:
            log.info("idle scrape backoff off: a utilization detector's metricsStalenessThreshold leaves no room "
                     "above --refresh-metrics-interval")
            return None
        return idle

    def degraded(self) -> list[str]:
        """Why the picker routes worse than it could while staying ready (``/readyz``).

        A lost state store keeps readiness: every replica loses the same store at once, and
        failing them all would take the gateway down while local routing still works."""
        if self.shared_state is not None:
            ok, reason = self.shared_state.healthy()
            if not ok:
                return [f"shared state: {reason}"]
        return []

    def pool_details(self) -> dict[str, Any]:
        """Pool-wide plugin state for ``/debug/endpoints``: characters per token learned per
        model by each prefix producer (a model's value, not an endpoint's)."""
        plugins = self.config.plugins.values() if self.config is not None else ()
        learned = {str(p.typed_name): p.chars_per_token_snapshot() for p in plugins
                   if isinstance(p, ApproxPrefixCacheProducer)}
        return {"charsPerToken": learned}

    def _predictors(self) -> list[PredictedLatencyProducer]:
        plugins = self.config.plugins.values() if self.config is not None else ()
        return [p for p in plugins if isinstance(p, PredictedLatencyProducer)]

    def _background_plugins(self) -> list[BackgroundWork]:
        plugins = self.config.plugins.values() if self.config is not None else ()
        return [p for p in plugins if isinstance(p, BackgroundWork)]

    def predictor_state(self) -> dict[str, Any]:
        """``/debug/predictor``: each latency predictor's samples, refits and held-out error."""
        predictors = {str(p.typed_name): p.debug_snapshot() for p in self._predictors()}
        return {"enabled": bool(predictors), "predictors": predictors}

    def flow_control_state(self) -> dict[str, Any]:
        """``/debug/flowcontrol``: the queue when flow control runs, else what admission does instead."""
        if self.flow_controller is not None:
            return {"enabled": True, **self.flow_controller.snapshot(), "workloads": self.workloads.snapshot()}
        assert self.config is not None
        detector = self.config.saturation_detector
        endpoints = routable(self.pool.endpoints(), time.monotonic())
        return {"enabled": False,
                "admission": "legacy: requests with priority < 0 get 429 while saturation >= 1.0",
                "saturationDetector": str(detector.typed_name),  # type: ignore[attr-defined]
                "saturation": detector.saturation(endpoints, time.monotonic())}

    def _passive_health(self) -> PassiveHealth:
        opts = self.options
        policy = EjectionPolicy(opts.eject_after_failures, opts.ejection_time,
                                max_ejection_percent=opts.max_ejection_percent)
        ejections = self.metrics.endpoint_ejections
        return PassiveHealth(self.pool, policy, on_eject=lambda ep: ejections.labels(ep.name).inc())

    def _grpc_server(self, max_message: int) -> grpc.aio.Server:
        return grpc.aio.server(options=[
            ("grpc.max_receive_message_length", max_message),
            # A BUFFERED body that was rewritten goes back whole in one message.
            ("grpc.max_send_message_length", max_message),
            ("grpc.so_reuseport", 0),
        ])

    def _listen(self, server: grpc.aio.Server, port: int, what: str,
                credentials: grpc.ServerCredentials | None = None) -> int:
        address = f"{self.options.bind}:{port}"
        bound: int = (server.add_insecure_port(address) if credentials is None
                      else server.add_secure_port(address, credentials))
        if bound == 0:
            raise OSError(f"cannot listen for {what} on {self.options.bind}:{port}")
        return bound

    async def start(self) -> None:
        if self.director is None:
            self.build()
        assert self.director is not None and self.collector is not None
        await self.health.start()
        opts = self.options
        extproc = self._grpc_server(opts.max_request_body_bytes + _GRPC_MESSAGE_OVERHEAD)
        self._extproc = ExtProcServicer(self.director, opts.max_request_body_bytes,
                                        max_inflight_body_bytes=opts.max_inflight_body_bytes,
                                        plain_errors=opts.plain_errors)
        pb_grpc.add_ExternalProcessorServicer_to_server(self._extproc, extproc)
        # Health on the ext_proc port too (over TLS when ext_proc is), so Envoy's gRPC
        # health check can target the cluster it already talks to.
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, extproc)
        self.grpc_port = self._listen(extproc, opts.grpc_port, "ext_proc", self._extproc_credentials)
        # The health port stays plaintext, as in the Go EPP: kubelet gRPC probes carry no TLS.
        health = self._grpc_server(_GRPC_SMALL_MESSAGE)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, health)
        self.grpc_health_port = self._listen(health, self.options.grpc_health_port, "gRPC health")
        for server in (extproc, health):
            await server.start()
            self._servers.append(server)
        app = build_admin_app(self.metrics, self.pool, self.decisions, self.collector, lambda: self.health.ready,
                              self._admin_token, self.debug_state,
                              {"flowcontrol": self.flow_control_state, "predictor": self.predictor_state},
                              settings=self._admin_settings, config=self.config, config_text=self._config_source,
                              options=dataclasses.asdict(opts), endpoint_details=self.endpoint_details,
                              pool_details=self.pool_details, degraded=self.degraded)
        self._admin = web.AppRunner(app, access_log=None)
        await self._admin.setup()
        site = web.TCPSite(self._admin, opts.admin_bind, opts.metrics_port)
        await site.start()
        self.metrics_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # private: the bound port
        self.tasks.start("collector", self.collector.run)
        if self._watcher is not None:
            self.tasks.start("pool-file watcher", self._watcher.watch)
        if self._objectives_watcher is not None:
            self.tasks.start("objectives-file watcher", self._objectives_watcher.watch)
        if self.flow_controller is not None:
            self.tasks.start("flow controller", self.flow_controller.run)
        for plugin in self._background_plugins():
            self.tasks.start(f"plugin {plugin.typed_name}", plugin.run)  # type: ignore[attr-defined]
        if self.shared_state is not None:
            self.tasks.start("shared state", self.shared_state.run)
        self.health.start_watch(_READINESS_PERIOD)
        await self.health.set_ready(True)
        log.info("ext_proc on %s:%d (%s), gRPC health on :%d, admin http://%s:%d (%s); %d endpoints; profiles: %s",
                 opts.bind, self.grpc_port, self._transport, self.grpc_health_port, opts.admin_bind,
                 self.metrics_port, "bearer token" if self._admin_token else "no auth",
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
        await self.tasks.aclose()
        if self.shared_state is not None:
            await self.shared_state.aclose()  # removes this replica's load from the store at once
        if self.flow_controller is not None:
            self.flow_controller.close()
        for plugin in self._background_plugins():
            try:
                plugin.close()
            except Exception:  # noqa: BLE001 - one plugin's failed flush must not stop the shutdown
                log.exception("closing plugin %s failed", plugin.typed_name)  # type: ignore[attr-defined]
        await self.health.aclose()
        if self.config is not None:
            for binding in self.config.data_bindings:
                await binding.source.aclose()
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
