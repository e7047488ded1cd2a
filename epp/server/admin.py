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

JSON answers are strict JSON: a non-finite number (a model server may report a NaN gauge)
is written as ``null``, since ``NaN`` and ``Infinity`` are not JSON and break parsers.
With a ``TokenFile``, every path but ``/healthz`` and ``/readyz`` needs
``Authorization: Bearer <token>`` (``epp/server/auth.py``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from epp.datalayer.collector import Collector
from epp.datalayer.passive_health import outlier_view
from epp.datalayer.pool import EndpointPool
from epp.metrics import PickerMetrics
from epp.scheduling.trace import DecisionLog
from epp.server.auth import TokenFile, bearer_auth_middleware

__all__ = ["build_admin_app", "json_response", "strict_json"]


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
) -> web.Application:
    """The admin server. ``pages``: more JSON snapshots, served at ``/debug/<name>``."""
    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if is_ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

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
                    "ageSeconds": round(now - m.update_time, 3) if m.update_time else None,
                },
                "custom": {key: {"value": c.value, "ageSeconds": round(now - c.update_time, 3)}
                           for key, c in sorted(ep.custom.items())},
                "scrape": {"consecutiveFailures": h.consecutive_failures, "lastError": h.last_error} if h else None,
                "passiveHealth": outlier_view(ep, now),
            })
        return json_response({"pool": pool.name, "endpoints": out})

    async def recent_decisions(request: web.Request) -> web.Response:
        try:
            limit = max(1, min(1000, int(request.query.get("limit", "20"))))
        except ValueError:
            return json_response({"error": "limit must be an integer"}, status=400)
        return json_response({"decisions": [t.as_dict() for t in decisions.recent(limit)]})

    async def decision(request: web.Request) -> web.Response:
        traces = decisions.get_all(request.match_info["request_id"])
        if not traces:
            hint = "" if decisions.capacity else " (decision log disabled: --decision-log-size 0)"
            return json_response({"error": f"no recent decision for this request id{hint}"}, status=404)
        # Request ids come from clients and may repeat: the newest trace, and any earlier ones.
        return json_response({**traces[0].as_dict(), "collisions": len(traces) - 1,
                              "earlier": [t.as_dict() for t in traces[1:]]})

    async def debug_state(_: web.Request) -> web.Response:
        return json_response(state() if state is not None else {})

    app = web.Application(middlewares=[bearer_auth_middleware(token)] if token is not None else [])
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/debug/endpoints", endpoints)
    app.router.add_get("/debug/decisions", recent_decisions)
    app.router.add_get("/debug/decisions/{request_id}", decision)
    app.router.add_get("/debug/state", debug_state)
    for name, snapshot in (pages or {}).items():
        app.router.add_get(f"/debug/{name}", _snapshot_handler(snapshot))
    return app


def _snapshot_handler(snapshot: Callable[[], dict[str, Any]]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(_: web.Request) -> web.Response:
        return json_response(snapshot())
    return handler
