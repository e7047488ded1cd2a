"""Per-model prompt tokenization for the precise prefix-cache scorer.

``TokenizerPool.tokenize(model, api, body, servers)`` returns the prompt's token ids as the
model server computes them (``epp.tokenization.PromptTokenizer.encode_request``), or
``None`` when they cannot be known (the scorer then scores neutrally).

Where the tokenizer comes from, first match wins:

1. ``model_paths``: an explicit model -> ``tokenizer.json`` path map.
2. ``model_dir``: ``<model_dir>/<model>/<file_name>`` (a model name with ``/`` is a nested
   directory, ``Qwen/Qwen3-0.6B/tokenizer.json``), or the Hugging Face cache layout
   ``<model_dir>/models--Qwen--Qwen3-0.6B/snapshots/<rev>/<file_name>``.
3. The model server's ``POST /tokenize`` (vLLM's API: ``{"model", "prompt"}`` or
   ``{"model", "messages", "add_generation_prompt": true}`` -> ``{"tokens": [...], ...}``),
   tried on at most two of the candidate servers with a short timeout.

A model whose file is missing or unreadable is remembered as such (logged once), so the
disk is not searched on every request; restart the picker after adding a tokenizer file.

Results are kept in a bounded LRU keyed by (model, api, xxh3-128 of the prompt part of
the body): repeated prompts (retries, benchmark loops, several profiles) cost one lookup.

Prompts that share a prefix with earlier ones (system prompts, templates, conversations)
encode only their new part: ``ChunkedEncoder`` (``chunked.py``) keeps token ids per chunk of
prompt text in a byte-bounded LRU (``chunk_cache_bytes``) for tokenizers where chunked
encoding provably equals whole encoding, and a sample of results is checked against a whole
encoding off the request path. The decision to leave the event loop is taken on the
characters that still need encoding, so a 4k-token prompt whose 3.5k-token prefix was seen
costs a cache walk and a short encode inline.

Cost, measured on this repository's 2-core CI box with a 14k-token byte-level BPE trained
on synthetic text: about 0.7 ms to encode a 700-token prompt, so roughly 1 ms per 1k
tokens, growing linearly; a 32k-token prompt takes tens of milliseconds. That is far too
long to hold the event loop, which is serving every other request's ext_proc stream, so
prompts longer than ``inline_max_chars`` are encoded in a small ``ThreadPoolExecutor``
(``tokenizers`` does its work in Rust; in the same measurement a pure-Python thread kept
about 40% of its speed while another thread encoded back to back, so the loop keeps
answering other streams meanwhile instead of stalling for the whole encode). Short prompts
are encoded inline: the thread hand-off costs about as much as the encode itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from array import array
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import xxhash

from epp.plugins.kvcache.chunked import ChunkedEncoder
from epp.tokenization import CHAT_COMPLETIONS, COMPLETIONS, PromptTokenizer, TokenizationError

__all__ = ["TokenizerPool", "prompt_digest"]

log = logging.getLogger(__name__)

_MAX_REMOTE_ATTEMPTS = 2


def prompt_digest(api: str, body: Mapping[str, Any]) -> bytes:
    """A digest of what decides the token ids (the prompt or the messages), not the whole body."""
    part = body.get("prompt") if api == COMPLETIONS else body.get("messages")
    try:
        data = orjson.dumps(part, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        data = repr(part).encode()
    return xxhash.xxh3_128_digest(api.encode() + b"\0" + data)


class TokenizerPool:
    """Token ids per (model, prompt), from local tokenizer files or the server's /tokenize."""

    def __init__(self, *, model_dir: Path | None = None, model_paths: Mapping[str, Path] | None = None,
                 file_name: str = "tokenizer.json", workers: int = 2, cache_size: int = 4096,
                 remote: bool = True, remote_timeout: float = 0.5, inline_max_chars: int = 2048,
                 chunk_cache_bytes: int = 32 << 20, chunk_chars: int = 512) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self._model_dir = model_dir
        self._model_paths = {m: Path(p) for m, p in (model_paths or {}).items()}
        self._file_name = file_name
        # Packed 4 bytes per id: a tuple of Python ints costs ~40 bytes per id, 100 KB per 2.5k-token prompt.
        self._cache: OrderedDict[tuple[str, bytes], array[int]] = OrderedDict()
        self._cache_size = cache_size
        self._tokenizers: dict[str, PromptTokenizer | None] = {}
        self._encoders: dict[str, ChunkedEncoder] = {}
        self._chunk_cache_bytes = chunk_cache_bytes
        self._chunk_chars = chunk_chars
        self._executor = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="epp-tokenize")
        self._remote = remote
        self._remote_timeout = remote_timeout
        self._inline_max_chars = inline_max_chars
        self._session: aiohttp.ClientSession | None = None
        self.hits = 0
        self.misses = 0
        self.failures = 0

    def __len__(self) -> int:
        return len(self._cache)

    def tokenizer_path(self, model: str) -> Path | None:
        """Where the local tokenizer file of ``model`` is, or None."""
        explicit = self._model_paths.get(model)
        if explicit is not None:
            return explicit
        if self._model_dir is None:
            return None
        direct = self._model_dir / model / self._file_name
        if direct.is_file():
            return direct
        snapshots = self._model_dir / ("models--" + model.replace("/", "--")) / "snapshots"
        if snapshots.is_dir():
            for candidate in sorted(snapshots.glob(f"*/{self._file_name}")):
                return candidate
        return None

    def local_tokenizer(self, model: str) -> PromptTokenizer | None:
        if model in self._tokenizers:
            return self._tokenizers[model]
        path = self.tokenizer_path(model)
        tokenizer: PromptTokenizer | None = None
        if path is not None:
            try:
                tokenizer = PromptTokenizer.from_file(path)
            except Exception as e:  # tokenizers raises a bare Exception on a malformed file
                log.warning("tokenizer for model %r at %s cannot be loaded: %s", model, path, e)
            else:
                encoder = ChunkedEncoder(tokenizer.backend, budget_bytes=self._chunk_cache_bytes,
                                         chunk_chars=self._chunk_chars)
                if encoder.disabled_reason is not None:
                    log.info("model %r: prompts are encoded whole (%s)", model, encoder.disabled_reason)
                self._encoders[model] = encoder
        elif not self._remote:
            log.warning("no tokenizer file for model %r and /tokenize fallback is off", model)
        self._tokenizers[model] = tokenizer
        return tokenizer

    async def tokenize(self, model: str, api: str, body: Mapping[str, Any],
                       servers: Sequence[str] = ()) -> list[int] | None:
        """The prompt's token ids for ``model``; ``servers`` are ``host:port`` for /tokenize. Never raises."""
        if api not in (COMPLETIONS, CHAT_COMPLETIONS):
            return None
        prompt = body.get("prompt")
        if api == COMPLETIONS and isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
            return list(prompt)  # already token ids: nothing to compute or cache
        key = (model, prompt_digest(api, body))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return cached.tolist()
        self.misses += 1
        tokens = await self._compute(model, api, body, servers)
        if tokens is None:
            self.failures += 1
            return None
        if self._cache_size > 0:
            try:
                self._cache[key] = array("I", tokens)
            except OverflowError:  # an id /tokenize gave that no vocabulary has: not worth caching
                return tokens
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return tokens

    async def _compute(self, model: str, api: str, body: Mapping[str, Any],
                       servers: Sequence[str]) -> list[int] | None:
        tokenizer = self.local_tokenizer(model)
        if tokenizer is not None:
            try:
                prompt = tokenizer.prompt_text(api, body)  # a template render: microseconds
                if isinstance(prompt, list):
                    return prompt
                return await self._encode(self._encoders[model], tokenizer, *prompt)
            except TokenizationError as e:
                log.debug("cannot tokenize a %s request for %r: %s", api, model, e)
                return None
        if self._remote:
            return await self._remote_tokenize(model, api, body, servers)
        return None

    async def _encode(self, encoder: ChunkedEncoder, tokenizer: PromptTokenizer, text: str,
                      add_special_tokens: bool) -> list[int]:
        loop = asyncio.get_running_loop()
        if not encoder.enabled:
            if len(text) <= self._inline_max_chars:
                return tokenizer.encode_text(text, add_special_tokens)
            return await loop.run_in_executor(self._executor, tokenizer.encode_text, text, add_special_tokens)
        plan = encoder.plan(text)
        if plan.missing_chars <= self._inline_max_chars:
            tokens = encoder.complete(plan, add_special_tokens)
        else:
            tokens = await loop.run_in_executor(self._executor, encoder.complete, plan, add_special_tokens)
        if encoder.should_verify():
            # Off the request path: this request keeps its ids; a mismatch turns chunking off for later ones.
            with contextlib.suppress(RuntimeError):  # the pool is closing
                loop.run_in_executor(self._executor, encoder.verify, text, add_special_tokens, tokens)
        return tokens

    def chunk_stats(self) -> dict[str, int]:
        """Chunk-cache counters summed over models, for ``/debug/sizes`` and benchmarks."""
        encoders = self._encoders.values()
        return {"tokenChunks": sum(len(e) for e in encoders),
                "tokenChunkBytes": sum(e.cached_bytes for e in encoders),
                "tokenChunkHits": sum(e.chunk_hits for e in encoders),
                "tokenChunkMisses": sum(e.chunk_misses for e in encoders)}

    async def _remote_tokenize(self, model: str, api: str, body: Mapping[str, Any],
                               servers: Sequence[str]) -> list[int] | None:
        if api == COMPLETIONS:
            payload: dict[str, Any] = {"model": model, "prompt": body.get("prompt")}
            if not isinstance(payload["prompt"], str):
                return None
        else:
            payload = {"model": model, "messages": body.get("messages"), "add_generation_prompt": True}
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._remote_timeout))
        for server in list(servers)[:_MAX_REMOTE_ATTEMPTS]:
            try:
                async with self._session.post(f"http://{server}/tokenize", json=payload) as response:
                    if response.status != 200:
                        log.debug("/tokenize on %s answered %d", server, response.status)
                        continue
                    data = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                log.debug("/tokenize on %s failed: %s", server, e)
                continue
            tokens = data.get("tokens") if isinstance(data, dict) else None
            if isinstance(tokens, list) and all(type(t) is int for t in tokens):
                return tokens
        return None

    async def aclose(self) -> None:
        """Close the HTTP session (awaitable part of shutdown); the pool stays usable."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

