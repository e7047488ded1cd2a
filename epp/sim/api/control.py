"""LoRA management (vLLM's routes) and the simulator's own ``/sim/*`` control routes.

vLLM routes:

* ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}``: 200 ``Success: LoRA adapter
  '<name>' added successfully.``; 400 if the name is already loaded. Loading into a GPU slot
  happens on the first request (see ``lora.py``).
* ``POST /v1/unload_lora_adapter`` ``{"lora_name"}``: 200 ``Success: LoRA adapter '<name>'
  removed successfully.``; 404 if unknown. New requests for it get 404; running ones finish.

* ``POST /reset_prefix_cache``: drop every cached block no request holds (vLLM's dev-mode
  route); 200 with an empty body. With KV events on, it publishes ``AllBlocksCleared`` (or
  ``BlockRemoved`` for the dropped blocks while some cached blocks are still in use).

Simulator routes (not in vLLM):

* ``POST /sim/fault`` ``{"mode": "ok" | "hang" | "error" | "down"}``: switch the fault mode
  (``faults.py``); answers ``{"mode": ...}``. ``GET /sim/fault`` reads it, with ``parked``:
  the requests ``hang`` holds right now.
* ``GET /sim/stats``: the ``SimStats`` snapshot as JSON.
* ``POST /sim/gauge`` ``{"name": N, "value": V}``: set (or create) the custom gauge ``N`` of
  ``/metrics``; answers ``{"name": N, "value": V}``; 400 for a name that is not a Prometheus
  metric name or is already on the page, or a value that is not a finite number.
  ``GET /sim/gauge`` lists the custom gauges as ``{name: value}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from epp.sim.api.context import ReplicaContext
from epp.sim.errors import BadRequest, NotFound
from epp.sim.faults import FaultMode
from epp.sim.gauge_values import check_name, check_value
from epp.sim.openai_request import load_json

__all__ = ["ControlRoutes"]

# Applies a fault mode; the server provides it because "down" closes its own listener.
FaultSetter = Callable[[FaultMode], Awaitable[None]]


def _name(body: dict[str, object], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{key} is required", param=key)
    return value


class ControlRoutes:
    """Adapter management and fault control of one replica."""

    def __init__(self, ctx: ReplicaContext, set_fault: FaultSetter) -> None:
        self._ctx = ctx
        self._set_fault = set_fault

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/load_lora_adapter", self.load_lora),
            web.post("/v1/unload_lora_adapter", self.unload_lora),
            web.post("/reset_prefix_cache", self.reset_prefix_cache),
            web.post("/sim/fault", self.post_fault),
            web.get("/sim/fault", self.get_fault),
            web.get("/sim/stats", self.stats),
            web.post("/sim/gauge", self.post_gauge),
            web.get("/sim/gauge", self.get_gauges),
        ]

    async def reset_prefix_cache(self, request: web.Request) -> web.Response:
        self._ctx.engine.reset_prefix_cache()
        return web.Response(status=200)

    async def load_lora(self, request: web.Request) -> web.Response:
        body = load_json(await request.read())
        name = _name(body, "lora_name")
        path = _name(body, "lora_path")
        ctx = self._ctx
        if name in ctx.config.served_names or not ctx.engine.lora.register(name, path):
            raise BadRequest(f"The lora adapter '{name}' has already been loaded.", param="lora_name")
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_lora(self, request: web.Request) -> web.Response:
        body = load_json(await request.read())
        name = _name(body, "lora_name")
        engine = self._ctx.engine
        if not engine.lora.unregister(name, engine.scheduler.running_loras()):
            raise NotFound(f"The lora adapter '{name}' cannot be found.", param="lora_name")
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    async def post_fault(self, request: web.Request) -> web.Response:
        body = load_json(await request.read())
        try:
            mode = FaultMode(body.get("mode"))
        except ValueError as exc:
            choices = ", ".join(m.value for m in FaultMode)
            raise BadRequest(f"mode must be one of: {choices}", param="mode") from exc
        await self._set_fault(mode)
        return web.Response(body=orjson.dumps({"mode": mode.value}), content_type="application/json")

    async def post_gauge(self, request: web.Request) -> web.Response:
        body = load_json(await request.read())
        name, value = body.get("name"), body.get("value")
        try:
            name = check_name(name)
        except ValueError as exc:
            raise BadRequest(str(exc), param="name") from exc
        try:
            number = check_value(value)
        except ValueError as exc:
            raise BadRequest(str(exc), param="value") from exc
        try:
            self._ctx.custom.set(name, number)
        except ValueError as exc:
            raise BadRequest(str(exc), param="name") from exc
        return web.Response(body=orjson.dumps({"name": name, "value": number}), content_type="application/json")

    async def get_gauges(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self._ctx.custom.values()), content_type="application/json")

    async def get_fault(self, request: web.Request) -> web.Response:
        fault = self._ctx.fault
        return web.Response(body=orjson.dumps({"mode": fault.mode.value, "parked": fault.parked}),
                            content_type="application/json")

    async def stats(self, request: web.Request) -> web.Response:
        ctx = self._ctx
        snapshot = ctx.engine.stats(fault=ctx.fault.mode.value, failed=ctx.failed)
        return web.Response(body=orjson.dumps(snapshot.to_json()), content_type="application/json")
