"""gRPC health: ``liveness`` (always serving), ``readiness``, ``""`` and the ext_proc service.

Readiness (and the ext_proc service, which Envoy's gRPC health check asks about) is
SERVING once the pool has been loaded and the server is not draining.
"""

from __future__ import annotations

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

__all__ = ["EXT_PROC_SERVICE", "HealthState"]

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
_READINESS_SERVICES = ("", "readiness", EXT_PROC_SERVICE)
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthState:
    def __init__(self) -> None:
        self.servicer = health_aio.HealthServicer()
        self.ready = False

    async def start(self) -> None:
        await self.servicer.set("liveness", _SERVING)
        await self.set_ready(False)

    async def set_ready(self, ready: bool) -> None:
        self.ready = ready
        for service in _READINESS_SERVICES:
            await self.servicer.set(service, _SERVING if ready else _NOT_SERVING)
