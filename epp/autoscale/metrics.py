"""The recommendation as WVA publishes it, on the autoscaler's own HTTP ``/metrics``.

Names and labels are WVA's (``internal/actuator``), so a Prometheus Adapter rule or a KEDA
trigger written for WVA reads these unchanged:

- ``wva_desired_replicas``, ``wva_current_replicas``, ``wva_desired_ratio`` (gauges,
  ``variant_name``, ``namespace``, ``accelerator_type``);
- ``wva_replica_scaling_total`` (counter, ``variant_name``, ``namespace``, ``direction``,
  ``reason``): one per change of the published recommendation.

Ours, not WVA's: ``wva_recommendation_stale`` (1 while metrics are missing and the last
recommendation is held, else 0) and ``wva_analysis_total`` (analyses by ``outcome``).
WVA emits nothing when it finds no accelerator name (its issue #995); here the label is a
flag with a default, so the metrics are always there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

__all__ = ["AutoscaleMetrics", "Variant", "build_metrics_app"]

_VARIANT_LABELS = ("variant_name", "namespace", "accelerator_type")


@dataclass(frozen=True)
class Variant:
    """Who a recommendation is for, as WVA labels it."""

    name: str
    namespace: str
    accelerator_type: str

    def labels(self) -> tuple[str, str, str]:
        return (self.name, self.namespace, self.accelerator_type)


class AutoscaleMetrics:
    """The gauges and counters, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.desired = Gauge("wva_desired_replicas", "Replicas the saturation analyzer recommends.",
                             _VARIANT_LABELS, registry=r)
        self.current = Gauge("wva_current_replicas", "Replicas seen reporting metrics at the last analysis.",
                             _VARIANT_LABELS, registry=r)
        self.ratio = Gauge("wva_desired_ratio", "Desired replicas divided by current replicas.",
                           _VARIANT_LABELS, registry=r)
        self.stale = Gauge("wva_recommendation_stale",
                           "1 while metrics are missing and the last recommendation is held, else 0.",
                           _VARIANT_LABELS, registry=r)
        self.scaling = Counter("wva_replica_scaling", "Changes of the recommended replica count.",
                               ("variant_name", "namespace", "direction", "reason"), registry=r)
        self.analyses = Counter("wva_analysis", "Analyses run, by outcome (fresh, stale).",
                                ("variant_name", "namespace", "outcome"), registry=r)

    def publish(self, variant: Variant, desired: int | None, current: int, stale: bool) -> None:
        """Set the gauges; ``desired`` is ``None`` when there is nothing to recommend yet."""
        labels = variant.labels()
        self.stale.labels(*labels).set(1 if stale else 0)
        self.analyses.labels(variant.name, variant.namespace, "stale" if stale else "fresh").inc()
        if not stale:
            self.current.labels(*labels).set(current)
        if desired is None:
            return
        self.desired.labels(*labels).set(desired)
        shown_current = current if current > 0 else None
        self.ratio.labels(*labels).set(desired / shown_current if shown_current else float(desired))

    def changed(self, variant: Variant, direction: str, reason: str) -> None:
        self.scaling.labels(variant.name, variant.namespace, direction, reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def build_metrics_app(metrics: AutoscaleMetrics, snapshot: Callable[[], dict[str, Any]]) -> web.Application:
    """``/metrics`` (Prometheus text), ``/healthz``, and ``/debug/autoscale`` (the last analyses, JSON)."""
    from epp.server.admin import json_response

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def debug(_: web.Request) -> web.Response:
        return json_response(snapshot())

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/debug/autoscale", debug)
    return app
