"""Routes that describe the server without generating: models, health, metrics, tokens.

* ``GET /v1/models``: vLLM's model cards, the served names and then the LoRA adapters
  (``parent`` = the base model).
* ``GET /health``: 200 with an empty body, like vLLM.
* ``GET /metrics``: the Prometheus page (after ``--metrics-delay`` wall seconds).
* ``POST /tokenize``: vLLM's ``{count, max_model_len, tokens, token_strs}`` for ``prompt`` or
  ``messages``.
* ``POST /v1/completions/render`` and ``/v1/chat/completions/render``: vLLM's GPU-less render
  API (``GenerateRequest``: ``token_ids``, ``sampling_params``, ...); completions return a
  list with one entry per prompt.
* ``GET /model_info`` and ``/server_info`` (and SGLang's older ``/get_*`` names): the fields
  sglang-router reads at start-up (``model_path`` above all).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import web

from epp.sim.api.context import ReplicaContext
from epp.sim.api.inference import InferenceRoutes
from epp.sim.chat_template import render_chat
from epp.sim.errors import BadRequest
from epp.sim.metrics.restrict import restrict_page
from epp.sim.openai_request import ParsedRequest, RequestKind, load_json

__all__ = ["InfoRoutes"]

# SamplingParams fields a render response echoes, with vLLM's defaults.
_SAMPLING_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "n": 1, "presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
    "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "seed": None, "stop": [],
    "stop_token_ids": [], "ignore_eos": False, "min_tokens": 0, "logprobs": None,
    "prompt_logprobs": None, "skip_special_tokens": True, "spaces_between_special_tokens": True,
})


def _json(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


class InfoRoutes:
    """Descriptive endpoints of one replica."""

    def __init__(self, ctx: ReplicaContext, inference: InferenceRoutes) -> None:
        self._ctx = ctx
        self._inference = inference

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/models", self.models),
            web.get("/health", self.health),
            web.get("/metrics", self.metrics),
            web.get("/metrics/", self.metrics),
            web.post("/tokenize", self.tokenize),
            web.post("/v1/completions/render", self.render_completion),
            web.post("/v1/chat/completions/render", self.render_chat),
            web.get("/model_info", self.model_info),
            web.get("/get_model_info", self.model_info),
            web.get("/server_info", self.server_info),
            web.get("/get_server_info", self.server_info),
        ]

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics(self, request: web.Request) -> web.Response:
        delay = self._ctx.config.metrics_delay
        if delay > 0:
            await asyncio.sleep(delay)
        sink = self._ctx.engine.metrics
        body = sink.render()
        custom = self._ctx.custom.render()
        if custom:
            body += custom.encode()
        # As vLLM: only /metrics/ (prometheus_client's app) honours name[]; /metrics ignores it.
        names = request.query.getall("name[]", [])
        if names and request.path.endswith("/"):
            body = restrict_page(body.decode(), frozenset(names)).encode()
        return web.Response(body=body, headers={"Content-Type": sink.content_type})

    async def models(self, request: web.Request) -> web.Response:
        ctx = self._ctx
        config = ctx.config

        def card(name: str, root: str, parent: str | None, max_len: int | None) -> dict[str, Any]:
            return {
                "id": name, "object": "model", "created": ctx.created, "owned_by": "vllm", "root": root,
                "parent": parent, "max_model_len": max_len,
                "permission": [{
                    "id": f"modelperm-{name}", "object": "model_permission", "created": ctx.created,
                    "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                    "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                    "organization": "*", "group": None, "is_blocking": False,
                }],
            }

        data = [card(name, config.model, None, config.max_model_len) for name in config.served_names]
        data += [card(name, path, config.model_name, None)
                 for name, path in ctx.engine.lora.registered().items()]
        return _json({"object": "list", "data": data})

    async def tokenize(self, request: web.Request) -> web.Response:
        ctx = self._ctx
        body = load_json(await request.read())
        ctx.resolve_model(body.get("model"))
        tokenizer = ctx.tokenizer
        if ctx.prompt_tokenizer is not None:
            return self._tokenize_real(body)
        if "messages" in body:
            add_gen = bool(body.get("add_generation_prompt", True))
            text = render_chat(body["messages"], add_generation_prompt=add_gen)
            add_bos = bool(body.get("add_special_tokens", False))
        elif isinstance(body.get("prompt"), str):
            text = body["prompt"]
            add_bos = body.get("add_special_tokens", True) is not False
        else:
            raise BadRequest("Either prompt (a string) or messages is required", param="prompt")
        tokens = tokenizer.encode(text, add_bos=add_bos)
        strs = None
        if body.get("return_token_strs"):
            strs = (["<|begin_of_text|>"] if add_bos else []) + tokenizer.pieces(text)
        return _json({"count": len(tokens), "max_model_len": ctx.config.max_model_len, "tokens": tokens,
                      "token_strs": strs})

    def _tokenize_real(self, body: dict[str, Any]) -> web.Response:
        """``/tokenize`` with ``--tokenizer``: the ids completions and chat would compute."""
        from epp.tokenization import CHAT_COMPLETIONS, COMPLETIONS, TokenizationError

        ctx = self._ctx
        real = ctx.prompt_tokenizer
        assert real is not None
        api = CHAT_COMPLETIONS if "messages" in body else COMPLETIONS
        if api == COMPLETIONS and not isinstance(body.get("prompt"), str):
            raise BadRequest("Either prompt (a string) or messages is required", param="prompt")
        try:
            tokens = real.encode_request(api, body)
        except TokenizationError as exc:
            raise BadRequest(str(exc), param="messages" if api == CHAT_COMPLETIONS else "prompt") from exc
        return _json({"count": len(tokens), "max_model_len": ctx.config.max_model_len, "tokens": tokens,
                      "token_strs": None})

    async def render_completion(self, request: web.Request) -> web.Response:
        parsed = self._inference.parse(await request.read(), RequestKind.COMPLETION)
        return _json([self._generate_request(parsed, "cmpl")])

    async def render_chat(self, request: web.Request) -> web.Response:
        parsed = self._inference.parse(await request.read(), RequestKind.CHAT)
        return _json(self._generate_request(parsed, "chatcmpl"))

    def _generate_request(self, parsed: ParsedRequest, prefix: str) -> dict[str, Any]:
        body = parsed.body
        params = {key: body.get(key, default) for key, default in _SAMPLING_DEFAULTS.items()}
        params["max_tokens"] = parsed.max_tokens
        return {
            "request_id": self._ctx.engine.new_request_id(prefix),
            "token_ids": parsed.prompt_ids,
            "features": None,
            "sampling_params": params,
            "model": body.get("model"),
            "stream": parsed.stream,
            "stream_options": body.get("stream_options") if parsed.stream else None,
            "cache_salt": parsed.cache_salt,
            "priority": body.get("priority", 0),
            "kv_transfer_params": None,
        }

    async def model_info(self, request: web.Request) -> web.Response:
        model = self._ctx.config.model
        return _json({
            "model_path": model, "tokenizer_path": model, "is_generation": True,
            "preferred_sampling_params": None, "weight_version": "default",
            "has_image_understanding": False, "has_audio_understanding": False,
            "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        })

    async def server_info(self, request: web.Request) -> web.Response:
        ctx = self._ctx
        config = ctx.config
        return _json({
            "model_path": config.model, "tokenizer_path": config.model,
            "served_model_name": config.model_name, "host": config.host, "port": request.url.port,
            "context_length": config.max_model_len, "page_size": config.block_size,
            "max_running_requests": config.max_num_seqs,
            "chunked_prefill_size": config.max_num_batched_tokens,
            "max_total_num_tokens": config.num_gpu_blocks * config.block_size,
            "disable_radix_cache": not config.enable_prefix_caching, "max_loras_per_batch": config.max_loras,
            "random_seed": config.seed, "tp_size": 1, "dp_size": 1, "pp_size": 1,
            "version": "epp-sim", "status": "ready",
            "internal_states": [{"last_gen_throughput": 0.0, "avg_spec_accept_length": None}],
        })
