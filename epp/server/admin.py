"""The admin HTTP server: ``/metrics``, ``/healthz``, ``/readyz`` and debug views.

Debug views (JSON):

- ``GET /debug/endpoints``: every endpoint with its latest metrics, custom metrics (value
  and age, by key), readiness and scrape health.
- ``GET /debug/decisions``: the most recent routing decisions (``?limit=N``).
- ``GET /debug/decisions/{request_id}``: why one request went where it went: candidates,
  what each filter kept, each scorer's score per endpoint with its weight, the totals and
  the pick.
- ``GET /debug/state``: the size of every per-key structure the picker holds.
- ``GET /debug/flowcontrol``: the admission queue: bands, flows, queue lengths and bytes,
  pool saturation (a frozen snapshot).
- ``GET /debug/predictor``: each latency predictor's sample count, last refit and its
  current error on a held-out window of recent requests.

- ``GET /debug/config``: the effective configuration and versions (for ``epp snapshot``),
  shape below.

JSON answers are strict JSON: a non-finite number (a model server may report a NaN gauge)
is written as ``null``, since ``NaN`` and ``Infinity`` are not JSON and break parsers.
With a ``TokenFile``, every path but ``/healthz`` and ``/readyz`` needs
``Authorization: Bearer <token>`` (``epp/server/auth.py``). Every request goes through
the middleware chain of ``epp/server/middleware.py`` (metrics, ``X-API-Version``,
``X-Request-Id``, panic recovery, auth, rate limit, logging); every error, bad query
parameters included, has the shape of ``epp/server/apierrors.py``. ``/readyz``'s
``503 not ready`` stays plain text: it is a probe answer, not an API error.

``GET /debug/config`` (``X-API-Version: v1``)::

    {
      "versions": {"epp": "0.1.0", "adminApi": "v1", "python": "3.11.9",
                   "pythonImplementation": "CPython",
                   "packages": {"aiohttp": "3.14.5", "grpcio": "...", "protobuf": "...",
                                "prometheus_client": "...", "PyYAML": "...", "xds-protos": "..."}},
      "config": {                          # null when the app was built without one
        "source": "text" | "default",      # "default": no config given, DEFAULT_CONFIG applies
        "document": {...},                 # the EndpointPickerConfig as loaded (parsed YAML)
        "featureGates": ["flowControl"],
        "plugins": [{"name": "queue-scorer", "type": "queue-scorer",
                     "parameters": {"someKey": 1} | null}],   # every plugin built, sorted by name,
                                                             # defaults filled in, YAML key names
        "profiles": [{"name": "default", "filters": ["..."],
                      "scorers": [{"plugin": "queue-scorer", "weight": 2.0}], "picker": "..."}],
        "parser": "openai-parser/openai-parser",
        "saturationDetector": "<type>/<name>",
        "flowControl": false,               # the flowControl gate and a flowControl section
        "dataSources": ["<type>/<name>"]
      },
      "options": {"grpc_port": 9002, ...} | null   # ServeOptions as given, by field name
    }

Secrets: any key that names a credential (``token``, ``secret``, ``password``,
``authorization``, ``api_key``, ``private_key``, ``*_token``, ``*_token_file``,
``cert_path``, ``key_file`` ...) has its value replaced by ``"<redacted>"`` wherever it
occurs (document, parameters, options); where a credential file is kept (the admin token
file, the TLS directory) is redacted too, since knowing it is half of reading it.
``config_text`` is left out of ``options`` (it is ``config.document``).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import json
import math
import platform
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import PurePath
from typing import Any

import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import epp
from epp.config.defaults import DEFAULT_CONFIG
from epp.config.loader import PickerConfig
from epp.datalayer.cache_counters import prefix_cache_view
from epp.datalayer.collector import Collector
from epp.datalayer.passive_health import outlier_view
from epp.datalayer.pool import EndpointPool
from epp.framework.params import field_key
from epp.metrics import PickerMetrics
from epp.scheduling.profile import SchedulerProfile
from epp.scheduling.trace import DecisionLog
from epp.server.apierrors import ApiError
from epp.server.auth import TokenFile
from epp.server.middleware import API_VERSION, AdminSettings, admin_middlewares

__all__ = ["build_admin_app", "config_view", "json_response", "redact", "strict_json"]

REDACTED = "<redacted>"
# Keys whose values are credentials or say where one is kept. Whole words only where a
# word is common in harmless names (``tokens`` in ``maxPrefixTokens`` is a count).
_SECRET_KEY = re.compile(
    r"(?i)(secret|passw|credential|authoriz|bearer|api[_-]?key|private[_-]?key|key[_-]?file|cert[_-]?path"
    r"|^token$|[_-]token$|[a-z]Token$|token[_-]?file|^tokenFile$)")
_PACKAGES = ("aiohttp", "grpcio", "protobuf", "prometheus_client", "PyYAML", "xds-protos")
_LEFT_OUT_OPTIONS = frozenset({"config_text"})


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def strict_json(value: Any) -> str:
    """``json.dumps`` that writes non-finite floats as ``null`` (and would raise rather than emit NaN)."""
    return json.dumps(_finite(value), allow_nan=False)


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=strict_json)


def build_admin_app(
    metrics: PickerMetrics,
    pool: EndpointPool,
    decisions: DecisionLog,
    collector: Collector | None,
    is_ready: Callable[[], bool],
    token: TokenFile | None = None,
    state: Callable[[], dict[str, Any]] | None = None,
    pages: Mapping[str, Callable[[], dict[str, Any]]] | None = None,
    *,
    settings: AdminSettings | None = None,
    config: PickerConfig | None = None,
    config_text: str | None = None,
    options: Mapping[str, Any] | None = None,
    endpoint_details: Callable[[str], Mapping[str, Any]] | None = None,
    pool_details: Callable[[], Mapping[str, Any]] | None = None,
    degraded: Callable[[], list[str]] | None = None,
) -> web.Application:
    """The admin server. ``pages``: more JSON snapshots, served at ``/debug/<name>``.

    ``settings``: rate limit and clocks (defaults: 100/s, burst 200). ``config``,
    ``config_text`` (the text it was loaded from; ``None`` or blank: the default config)
    and ``options`` (the serve options, e.g. ``dataclasses.asdict(ServeOptions)``) feed
    ``/debug/config``. ``endpoint_details`` adds plugin state to each endpoint of
    ``/debug/endpoints``, ``pool_details`` adds pool-wide plugin state (e.g. characters per
    token learned per model) beside the list.
    """
    settings = settings if settings is not None else AdminSettings()

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        # Degradations that do not stop routing (a lost state store) keep the probe at 200
        # but are said here, so an operator reading the probe sees them.
        notes = "".join(f"degraded: {reason}\n" for reason in (degraded() if degraded is not None else ()))
        if is_ready():
            return web.Response(text="ready\n" + notes)
        return web.Response(status=503, text="not ready\n" + notes)

    async def endpoints(_: web.Request) -> web.Response:
        now = time.monotonic()
        health = {h.name: h for h in collector.health()} if collector is not None else {}
        out = []
        for ep in pool.endpoints():
            m = ep.metrics
            h = health.get(ep.name)
            out.append({
                "name": ep.name, "address": ep.hostport, "ready": ep.ready, "labels": dict(ep.metadata.labels),
                "metrics": {
                    "waitingQueueSize": m.waiting_queue_size, "runningRequestsSize": m.running_requests_size,
                    "kvCacheUsagePercent": m.kv_cache_usage_percent, "activeModels": sorted(m.active_models),
                    "waitingModels": sorted(m.waiting_models), "maxActiveModels": m.max_active_models,
                    "cacheBlockSize": m.cache_block_size, "cacheNumBlocks": m.cache_num_blocks,
                    **prefix_cache_view(m), "processStartTime": m.process_start_time or None,
                    "ageSeconds": round(now - m.update_time, 3) if m.update_time else None,
                },
                "custom": {key: {"value": c.value, "ageSeconds": round(now - c.update_time, 3)}
                           for key, c in sorted(ep.custom.items())},
                "scrape": {"consecutiveFailures": h.consecutive_failures, "lastError": h.last_error,
                           "intervalSeconds": h.scrape_interval} if h else None,
                "passiveHealth": outlier_view(ep, now),
                **(endpoint_details(ep.name) if endpoint_details is not None else {}),
            })
        return json_response({"pool": pool.name, "endpoints": out,
                              **(pool_details() if pool_details is not None else {})})

    async def recent_decisions(request: web.Request) -> web.Response:
        raw = request.query.get("limit", "20")
        try:
            limit = max(1, min(1000, int(raw)))
        except ValueError:
            raise ApiError(400, "limit must be an integer (1 to 1000)",
                           {"parameter": "limit", "value": raw[:100]}) from None
        return json_response({"decisions": [t.as_dict() for t in decisions.recent(limit)]})

    async def decision(request: web.Request) -> web.Response:
        traces = decisions.get_all(request.match_info["request_id"])
        if not traces:
            hint = "" if decisions.capacity else " (decision log disabled: --decision-log-size 0)"
            raise ApiError(404, f"no recent decision for this request id{hint}",
                           {"requestId": request.match_info["request_id"][:200]})
        # Request ids come from clients and may repeat: the newest trace, and any earlier ones.
        return json_response({**traces[0].as_dict(), "collisions": len(traces) - 1,
                              "earlier": [t.as_dict() for t in traces[1:]]})

    async def debug_state(_: web.Request) -> web.Response:
        return json_response(state() if state is not None else {})

    async def debug_config(_: web.Request) -> web.Response:
        return json_response(config_view(config, config_text, options))

    app = web.Application(middlewares=admin_middlewares(metrics.registry, settings, token))
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/debug/endpoints", endpoints)
    app.router.add_get("/debug/decisions", recent_decisions)
    app.router.add_get("/debug/decisions/{request_id}", decision)
    app.router.add_get("/debug/state", debug_state)
    app.router.add_get("/debug/config", debug_config)
    for name, snapshot in (pages or {}).items():
        app.router.add_get(f"/debug/{name}", _snapshot_handler(snapshot))
    return app


def _snapshot_handler(snapshot: Callable[[], dict[str, Any]]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(_: web.Request) -> web.Response:
        return json_response(snapshot())
    return handler


def _plain(value: Any) -> Any:
    """A parameter value as JSON: dataclasses by their YAML keys, collections as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field_key(f): _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted((_plain(v) for v in value), key=str)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)  # a Path, a Duration...: its text


def redact(value: Any) -> Any:
    """``value`` with every credential-named key's value replaced by ``REDACTED``."""
    if isinstance(value, Mapping):
        return {k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) and v is not None else redact(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _versions() -> dict[str, Any]:
    packages = {}
    for name in _PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"epp": epp.__version__, "adminApi": API_VERSION, "python": platform.python_version(),
            "pythonImplementation": platform.python_implementation(), "packages": packages}


def _name(plugin: Any) -> str:
    return str(plugin.typed_name.name)


def _profiles(config: PickerConfig) -> list[dict[str, Any]]:
    out = []
    for name, profile in config.scheduler.profiles.items():
        if isinstance(profile, SchedulerProfile):
            out.append({"name": name, "filters": [_name(f) for f in profile.filters],
                        "scorers": [{"plugin": _name(ws.scorer), "weight": ws.weight} for ws in profile.scorers],
                        "picker": _name(profile.picker)})
        else:
            out.append({"name": name})
    return out


def _config(config: PickerConfig, config_text: str | None) -> dict[str, Any]:
    given = bool(config_text and config_text.strip())
    document = yaml.safe_load(config_text if given else DEFAULT_CONFIG)  # type: ignore[arg-type]
    plugins = [{"name": name, "type": plugin.typed_name.type,
                "parameters": _plain(plugin.params) if plugin.params is not None else None}
               for name, plugin in sorted(config.plugins.items())]
    return {
        "source": "text" if given else "default",
        "document": _plain(document) if document is not None else None,
        "featureGates": sorted(config.feature_gates),
        "plugins": plugins,
        "profiles": _profiles(config),
        "parser": str(config.parser.typed_name),  # type: ignore[attr-defined]
        "saturationDetector": str(config.saturation_detector.typed_name),  # type: ignore[attr-defined]
        "flowControl": config.flow_control is not None,
        "dataSources": [str(getattr(b.source, "typed_name", type(b.source).__name__)) for b in config.data_bindings],
    }


def config_view(config: PickerConfig | None, config_text: str | None = None,
                options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``/debug/config``'s document (shape in the module docstring), secrets redacted."""
    kept = None
    if options is not None:
        kept = {k: str(v) if isinstance(v, PurePath) else _plain(v)
                for k, v in options.items() if k not in _LEFT_OUT_OPTIONS}
    view: dict[str, Any] = redact({"versions": _versions(),
                                   "config": _config(config, config_text) if config is not None else None,
                                   "options": kept})
    return view
