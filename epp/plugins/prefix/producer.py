"""``approx-prefix-cache-producer``: which endpoints likely hold this prompt's prefix.

PrepareData hashes the prompt once (see ``hashing``) and matches it against the index,
writing a ``PrefixMatch`` for scorers and filters. PreRequest records the request's
blocks against the chosen endpoint (and the ``prefill`` profile's endpoint, if any), so
later requests sharing the prefix find it. Recording is synchronous: the very next
request already sees it (the Go EPP records asynchronously).

Parameters (GIE names and defaults):

- ``autoTune`` (true): take block size and per-endpoint capacity from the endpoint's
  ``vllm:cache_config_info`` (``block_size``, ``num_gpu_blocks``) once scraped.
- ``blockSizeTokens`` (16): tokens per block when not auto-tuned; > 0.
- ``maxPrefixBlocksToMatch`` (256): longest prefix considered, in blocks; ≥ 0.
- ``maxPrefixTokensToMatch`` (0 = unset): the same in tokens; overrides the above.
- ``lruCapacityPerServer`` (31250): blocks remembered per endpoint without cache info.
- ``blockSize``: deprecated and ignored (a warning at start-up), as in the Go EPP.

Removed endpoints are purged from the index as soon as the pool drops them.

Characters per token are learned per target model (``epp.datalayer.token_ratio``):
PreRequest keeps the prompt's length, and ResponseComplete folds it in against the usage's
``prompt_tokens``. PrepareData hashes with the ratio in use for the model (block bytes =
block tokens x ratio) and publishes it under ``CHARS_PER_TOKEN_KEY`` for every token
estimate made later in the request. ``chars_per_token_snapshot()`` shows what was learned.
When a model's ratio changes, the blocks indexed under the old byte size stop matching the
new hashes; for ``_TRANSITION_SECONDS`` the prompt is also hashed at the old size and each
endpoint keeps the better of the two matches, so the switch costs no affinity (new
requests are recorded at the new size only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Gauge

from epp.datalayer.endpoint import Endpoint
from epp.datalayer.token_ratio import TokenRatios
from epp.framework.attributes import CHARS_PER_TOKEN_KEY, PREFIX_MATCH_KEY, PrefixMatch, request_chars_per_token
from epp.framework.params import require
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.requestcontrol import ResponseInfo
from epp.framework.scheduling import CycleState, SchedulingResult
from epp.metricfamilies import HistogramFamily
from epp.plugins.prefix.hashing import block_bytes, hash_prompt
from epp.plugins.prefix.index import PrefixIndex
from epp.requests.types import InferenceRequest

__all__ = ["ApproxPrefixCacheProducer", "PrefixProducerParams"]

log = logging.getLogger(__name__)

PREFILL_PROFILE = "prefill"
_RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_BYTES_BUCKETS = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
# Long enough for the new size's entries to be recorded for every prefix still in use.
_TRANSITION_SECONDS = 120.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefixProducerParams:
    auto_tune: bool = True
    block_size_tokens: int = 16
    max_prefix_blocks_to_match: int = 256
    max_prefix_tokens_to_match: int = 0
    lru_capacity_per_server: int = 31250
    block_size: int = 0

    def __post_init__(self) -> None:
        require(self.block_size_tokens > 0, "block_size_tokens", "must be > 0", self.block_size_tokens)
        require(self.max_prefix_blocks_to_match >= 0, "max_prefix_blocks_to_match", "must be >= 0",
                self.max_prefix_blocks_to_match)
        require(self.max_prefix_tokens_to_match >= 0, "max_prefix_tokens_to_match", "must be >= 0",
                self.max_prefix_tokens_to_match)
        require(self.lru_capacity_per_server > 0, "lru_capacity_per_server", "must be > 0",
                self.lru_capacity_per_server)


class ApproxPrefixCacheProducer(BasePlugin):
    """Hashes prompts into blocks and tracks which endpoint holds which prefix."""

    TYPE = "approx-prefix-cache-producer"
    PARAMS = PrefixProducerParams
    PRODUCES = frozenset({PREFIX_MATCH_KEY})
    params: PrefixProducerParams

    def __init__(self, name: str, params: PrefixProducerParams | None, handle: Handle,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, params or PrefixProducerParams(), handle)
        self._clock = clock
        # model -> (the ratio in use before the last change, until when it is also matched)
        self._previous_ratio: dict[str, tuple[float, float]] = {}
        if self.params.block_size > 0:
            log.warning("%s: blockSize is deprecated and ignored; use blockSizeTokens", self.typed_name)
        self.index = PrefixIndex(self.params.lru_capacity_per_server)
        self._state_key = f"{self.TYPE}/{name}"
        self._prompt_chars_key = f"{self.TYPE}/{name}/prompt-chars"
        self.token_ratios = TokenRatios()
        handle.pool.add_listener(self)
        self._hit_ratio: HistogramFamily | None = None
        self._hit_bytes: HistogramFamily | None = None
        if handle.metrics_registry is not None:
            try:
                size = Gauge("inference_extension_prefix_indexer_size", "Size of the prefix indexer.",
                             registry=handle.metrics_registry)
                size.set_function(lambda: len(self.index))
                self._hit_ratio = HistogramFamily(
                    "inference_extension_prefix_indexer_hit_ratio",
                    "Ratio of prefix length matched to total prefix length in the cache lookup.",
                    (), _RATIO_BUCKETS, handle.metrics_registry)
                self._hit_bytes = HistogramFamily(
                    "inference_extension_prefix_indexer_hit_bytes",
                    "Length of the prefix match in number of bytes in the cache lookup.",
                    (), _BYTES_BUCKETS, handle.metrics_registry)
            except ValueError:  # a second producer instance: metrics belong to the first
                log.warning("%s: prefix indexer metrics already registered by another instance", self.typed_name)

    def block_size_tokens(self, endpoints: list[Endpoint]) -> int:
        if self.params.auto_tune:
            for ep in endpoints:
                if ep.metrics.cache_block_size > 0:
                    return ep.metrics.cache_block_size
        return self.params.block_size_tokens

    def max_blocks(self, block_size_tokens: int) -> int:
        if self.params.max_prefix_tokens_to_match > 0:
            return self.params.max_prefix_tokens_to_match // block_size_tokens
        return self.params.max_prefix_blocks_to_match

    async def prepare_data(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> None:
        block_size = self.block_size_tokens(endpoints)
        chars_per_token = request.plugin_state[CHARS_PER_TOKEN_KEY] = \
            self.token_ratios.chars_per_token(request.target_model)
        hashes = hash_prompt(request.prompt, request.target_model, request.cache_salt, block_size,
                             self.max_blocks(block_size), chars_per_token)
        matches = self.index.match(hashes) if hashes else {}
        if self._previous_ratio and hashes:
            matches = self._with_previous_size(request, block_size, len(hashes), matches)
        cycle[PREFIX_MATCH_KEY] = PrefixMatch(len(hashes), block_size, matches)
        request.plugin_state[self._state_key] = hashes

    def _with_previous_size(self, request: InferenceRequest, block_size: int, total: int,
                            matches: dict[str, int]) -> dict[str, int]:
        previous = self._previous_ratio.get(request.target_model)
        if previous is None:
            return matches
        ratio, until = previous
        if self._clock() > until:
            del self._previous_ratio[request.target_model]
            return matches
        old = hash_prompt(request.prompt, request.target_model, request.cache_salt, block_size,
                          self.max_blocks(block_size), ratio)
        merged = dict(matches)
        # Old blocks are another length: count what they cover in blocks of the new size.
        old_bytes = block_bytes(block_size, ratio)
        new_bytes = block_bytes(block_size, request_chars_per_token(request))
        for endpoint, blocks in (self.index.match(old) if old else {}).items():
            merged[endpoint] = max(merged.get(endpoint, 0), min(blocks * old_bytes // new_bytes, total))
        return merged

    def pre_request(self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult) -> None:
        if request.prompt:
            # The prompt is released once the request is routed; its length is the sample.
            request.plugin_state[self._prompt_chars_key] = len(request.prompt)
        hashes = request.plugin_state.pop(self._state_key, None)
        if not hashes:
            return
        primary = result.primary.endpoints[0]
        targets = [primary]
        prefill = result.profile_results.get(PREFILL_PROFILE)
        if prefill is not None and prefill.endpoints and prefill.endpoints[0] is not primary:
            targets.append(prefill.endpoints[0])
        match = cycle.get(PREFIX_MATCH_KEY)
        # Replicas sharing the index compare it: hashes of different block sizes never match.
        hashed_bytes = block_bytes(match.block_size_tokens, request_chars_per_token(request)) \
            if isinstance(match, PrefixMatch) else 0
        for endpoint in targets:
            if self.params.auto_tune and endpoint.metrics.cache_num_blocks > 0 \
                    and self.index.capacity(endpoint.name) != endpoint.metrics.cache_num_blocks:
                self.index.set_capacity(endpoint.name, endpoint.metrics.cache_num_blocks)
            self.index.record(endpoint.name, hashes, hashed_bytes)
        if isinstance(match, PrefixMatch) and match.total_blocks and self._hit_ratio is not None:
            matched = match.matches.get(primary.name, 0)
            self._hit_ratio.observe(matched / match.total_blocks)
            assert self._hit_bytes is not None
            self._hit_bytes.observe(matched * hashed_bytes)

    def response_complete(self, request: InferenceRequest, response: ResponseInfo) -> None:
        prompt_chars = request.plugin_state.pop(self._prompt_chars_key, 0)
        usage = response.usage
        if response.completed and usage is not None and prompt_chars:
            model = request.target_model
            before = self.token_ratios.chars_per_token(model)
            self.token_ratios.observe(model, prompt_chars, usage.prompt_tokens)
            if self.token_ratios.chars_per_token(model) != before:
                self._previous_ratio[model] = (before, self._clock() + _TRANSITION_SECONDS)

    def adopted_ratios(self) -> dict[str, float]:
        """Characters per token this replica adopted since the last call (to share)."""
        return self.token_ratios.take_adopted()

    def agree_ratio(self, model: str, chars_per_token: float) -> None:
        """Another replica's value for ``model``: used here too, with the same transition as a
        value learned here, so replicas sharing the index hash with one block size."""
        before = self.token_ratios.chars_per_token(model)
        if self.token_ratios.agree(model, chars_per_token):
            self._previous_ratio[model] = (before, self._clock() + _TRANSITION_SECONDS)

    def chars_per_token_snapshot(self) -> dict[str, dict[str, float | int]]:
        """Per target model, for ``/debug``: ``charsPerToken`` in use, ``learned``, ``samples``."""
        return self.token_ratios.snapshot()

    def debug_sizes(self) -> dict[str, int]:
        """What the index holds, for ``/debug/state``."""
        stats = self.index.statistics()
        return {"endpoints": stats.endpoints, "entries": stats.entries, "distinctBlocks": stats.distinct_blocks,
                "tokenRatioModels": len(self.token_ratios)}

    def endpoint_added(self, endpoint: Endpoint) -> None:
        return None

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.index.remove_endpoint(endpoint.name)
