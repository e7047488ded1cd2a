"""gRPC health: ``liveness`` (always serving), ``readiness``, ``""`` and the ext_proc service.

Readiness (and the ext_proc service, which Envoy's gRPC health check asks about; HTTP
``/readyz`` reads the same ``ready``) is SERVING when both hold:

- the server has started and is not draining (``set_ready``);
- the data is fresh (``fresh``, the collector's ``has_fresh_data``): with scraping
  configured and a non-empty pool, at least one endpoint had a successful scrape within
  the freshness bound. A dead collector or an unreachable fleet otherwise leaves the
  picker routing on frozen numbers while it claims to be ready; NOT_SERVING lets Envoy
  (``failure_mode_allow: false``) answer by itself instead.

Freshness changes with time, not with an event, so ``start_watch`` re-evaluates it every
``period`` and pushes changes to the gRPC servicer (``Check`` and ``Watch`` read what
was pushed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

__all__ = ["EXT_PROC_SERVICE", "HealthState"]

log = logging.getLogger(__name__)

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
_READINESS_SERVICES = ("", "readiness", EXT_PROC_SERVICE)
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthState:
    def __init__(self, fresh: Callable[[], bool] | None = None) -> None:
        self.servicer = health_aio.HealthServicer()
        self.fresh = fresh
        self.serving = False  # started and not draining
        self._reported: bool | None = None
        self._watch: asyncio.Task[None] | None = None
        self._was_fresh = False  # no data before the first scrape: becoming fresh is news, starting stale is not

    @property
    def ready(self) -> bool:
        return self.serving and self._data_fresh()

    def _data_fresh(self) -> bool:
        fresh = self.fresh is None or self.fresh()
        if fresh != self._was_fresh and self.serving:
            if fresh:
                log.info("readiness: endpoint metrics are fresh; SERVING")
            else:
                log.warning("readiness: no endpoint has fresh metrics (no successful scrape within the freshness "
                            "bound); NOT_SERVING")
        self._was_fresh = fresh
        return fresh

    async def start(self) -> None:
        await self.servicer.set("liveness", _SERVING)
        await self.set_ready(False)

    async def set_ready(self, ready: bool) -> None:
        self.serving = ready
        await self.refresh()

    async def refresh(self) -> None:
        ready = self.ready
        if ready == self._reported:
            return
        self._reported = ready
        for service in _READINESS_SERVICES:
            await self.servicer.set(service, _SERVING if ready else _NOT_SERVING)

    def start_watch(self, period: float) -> None:
        """Re-evaluate readiness every ``period`` seconds until ``aclose``.

        Owned here rather than by the server's supervisor: it must outlive a collector
        crash to report it, and it only ever sleeps and compares.
        """
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_loop(period), name="readiness watch")

    async def _watch_loop(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - a failed check must not end the checking
                log.exception("readiness check failed")

    async def aclose(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
