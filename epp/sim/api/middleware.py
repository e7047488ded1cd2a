"""The one middleware every request of a replica goes through.

In this order it: parks requests while the replica is in fault mode ``hang``; answers
inference requests with a 500 in mode ``error``; runs the handler; turns ``SimHTTPError``
into vLLM's error body and aiohttp's 404/405 into FastAPI's ``{"detail": ...}``; and
records the request in the HTTP metrics. ``/sim/*`` routes are never faulted.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from epp.sim.api.context import ReplicaContext
from epp.sim.errors import InternalError, SimHTTPError, error_response
from epp.sim.faults import FaultMode

__all__ = ["INFERENCE_PATHS", "make_middleware"]

# Routes that generate tokens: the only ones fault mode "error" breaks.
INFERENCE_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})


def _detail(status: int, text: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"detail": text}), content_type="application/json")


def _size(response: web.StreamResponse) -> int:
    if isinstance(response, web.Response) and isinstance(response.body, bytes):
        return len(response.body)
    return response.body_length


def make_middleware(ctx: ReplicaContext) -> Middleware:
    """The middleware for one replica."""
    fault = ctx.fault
    loop_time = asyncio.get_running_loop().time

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if fault.mode is not FaultMode.OK and not path.startswith("/sim/"):
            await fault.wait_released()
            if fault.mode is FaultMode.ERROR and path in INFERENCE_PATHS:
                ctx.failed += 1
                return error_response(InternalError("Simulated engine failure (fault mode error)."))
        start = loop_time()
        try:
            response = await handler(request)
        except SimHTTPError as exc:
            response = error_response(exc)
        except web.HTTPNotFound:
            response = _detail(404, "Not Found")
        except web.HTTPMethodNotAllowed:
            response = _detail(405, "Method Not Allowed")
        resource = request.match_info.route.resource
        if resource is not None:
            ctx.engine.metrics.on_http(resource.canonical, request.method, response.status,
                                       request.content_length or 0, _size(response),
                                       loop_time() - start)
        return response

    return middleware
