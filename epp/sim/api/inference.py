"""``POST /v1/completions`` and ``POST /v1/chat/completions``: validate, queue, answer.

A request is parsed and tokenized, queued in the engine, and answered either once it is
finished or as an SSE stream that writes every step's new tokens in one write. If the
client disconnects (aiohttp cancels the handler), the request is aborted in the engine
and its KV blocks are freed, as vLLM does.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType

from aiohttp import web

from epp.sim.api.bodies import DONE, StreamChunks, completion_body
from epp.sim.api.context import ReplicaContext
from epp.sim.errors import InternalError
from epp.sim.openai_request import ParsedRequest, RequestKind, parse_request
from epp.sim.request import RequestStatus, SimRequest

__all__ = ["InferenceRoutes"]

# vLLM's id prefixes per endpoint.
_ID_PREFIX: Mapping[RequestKind, str] = MappingProxyType(
    {RequestKind.COMPLETION: "cmpl", RequestKind.CHAT: "chatcmpl"})

_SSE_HEADERS: Mapping[str, str] = MappingProxyType(
    {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"})


class InferenceRoutes:
    """The two generation endpoints of one replica."""

    def __init__(self, ctx: ReplicaContext) -> None:
        self._ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/completions", self.completions),
            web.post("/v1/chat/completions", self.chat),
        ]

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, RequestKind.COMPLETION)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, RequestKind.CHAT)

    def parse(self, raw: bytes, kind: RequestKind) -> ParsedRequest:
        """Validate a body against this replica's models and limits (also used by render)."""
        ctx = self._ctx
        config = ctx.config
        return parse_request(raw, kind, tokenizer=ctx.tokenizer, resolve=ctx.resolve_model,
                             max_model_len=config.max_model_len, default_max_tokens=config.default_max_tokens,
                             default_model=config.model_name, prompt_tokenizer=ctx.prompt_tokenizer)

    async def _handle(self, request: web.Request, kind: RequestKind) -> web.StreamResponse:
        ctx = self._ctx
        parsed = self.parse(await request.read(), kind)
        engine = ctx.engine
        if engine.draw_failure():
            ctx.failed += 1
            raise InternalError("Simulated engine failure (--fail-rate).")
        req = engine.submit(parsed, engine.new_request_id(_ID_PREFIX[kind]))
        try:
            if parsed.stream:
                return await self._stream(request, kind, parsed, req)
            while not req.done:
                await req.wait()
                req.take_new_text()
            if req.status is RequestStatus.ABORTED:
                raise InternalError("The request was aborted by the server.")
            return web.Response(body=completion_body(kind, req, parsed.model, int(time.time())),
                                content_type="application/json")
        finally:
            engine.abort(req)  # no-op once finished; frees KV blocks if the client left

    async def _stream(self, request: web.Request, kind: RequestKind, parsed: ParsedRequest,
                      req: SimRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        chunks = StreamChunks(kind, req, parsed.model, int(time.time()))
        interval = self._ctx.config.stream_interval
        pending: list[str] = []
        while True:
            await req.wait()
            pending.extend(req.take_new_text())
            finished = req.done
            out = []
            while len(pending) >= interval and (len(pending) > interval or not finished):
                out.append(chunks.text("".join(pending[:interval]), None))
                del pending[:interval]
            if finished:
                if req.status is RequestStatus.ABORTED:
                    break  # the server stopped; end the stream without [DONE]
                out.append(chunks.text("".join(pending), req.stop_reason))
                if parsed.include_usage:
                    out.append(chunks.usage())
                out.append(DONE)
            if out:
                await response.write(b"".join(out))
            if finished:
                break
        await response.write_eof()
        return response
