"""``precise-prefix-cache-scorer``: prefer endpoints whose KV cache really holds the prompt's prefix.

Unlike ``prefix-cache-scorer`` (which remembers where it routed, and so is wrong once a
replica evicts, restarts or is fed by another picker replica), this one reads each model
server's own KV-cache events (``KVEventsSubscriber`` -> ``KVBlockIndex``) and matches the
prompt's token blocks against what each replica reports it holds.

Per request (PrepareData): the prompt is tokenized for the target model
(``TokenizerPool``: local tokenizer file, else the server's ``/tokenize``), cut into blocks
of each endpoint's block size (learnt from its events; ``tokenProcessorConfig.blockSize``
until then), keyed with ``keys.block_keys`` (under the request's LoRA id, see ``loraIds``),
and matched: the fraction of the prompt's full blocks each endpoint holds as a leading run
is stored in the cycle state (``PreciseMatch`` under ``precise-prefix-cache-scorer/<name>``).
Score = that fraction; endpoints the index knows nothing about, prompts shorter than a
block, and prompts that cannot be tokenized score 0 everywhere. Never raises.
Category: Affinity.

Parameters: llm-d's names (inference scheduler's ``precise-prefix-cache-scorer``, backed by
llm-d-kv-cache's configuration) are accepted so its configs load. Those that describe
llm-d's own machinery are accepted and ignored (logged once): ``hashSeed`` (our block keys
are computed from token ids and never reproduce vLLM's hash), ``prefixStoreConfig``,
``kvBlockIndexConfig.inMemoryConfig.podCacheSize``, ``minPrefixOverlapRatio``,
``concurrency``, ``hf`` (nothing is downloaded; put the tokenizer file on disk or rely on
``/tokenize``).

- ``speculativeIndexing`` (false) and ``speculativeTTL`` ("2s", llm-d's default): at
  PreRequest, the blocks the routed request will create (its prompt's block keys, computed
  in PrepareData) are added to the chosen endpoint's (and the prefill endpoint's) entries as
  speculative, matching like stored blocks until the replica's ``BlockStored`` confirms them,
  its ``BlockRemoved`` drops them, or the TTL passes. This closes the blind window between
  routing and the replica's events, in which requests sharing a new prefix would otherwise
  score 0 everywhere and scatter.

- ``tokenProcessorConfig.blockSize`` (16; ``blockSizeTokens`` is the newer spelling):
  tokens per block until an endpoint's events tell its real block size.
- ``indexerConfig.kvBlockIndexConfig.inMemoryConfig.size`` (1e8): llm-d's global key bound;
  ours is per endpoint: ``maxBlocksPerEndpoint`` (1,000,000) wins when given.
- ``indexerConfig.tokenizersPoolConfig``: ``modelName`` (used for requests whose target
  model has no tokenizer of its own), ``workersCount`` (threads for long prompts, 5),
  ``local.autoDiscoveryDir`` (``<dir>/<model>/tokenizer.json``),
  ``local.autoDiscoveryTokenizerFileName`` (``tokenizer.json``), ``local.modelTokenizerMap``
  (model -> file); ours: ``remoteTokenize`` (true: fall back to the server's ``/tokenize``),
  ``remoteTimeout`` ("500ms"), ``cacheSize`` (4096 prompts), ``chunkCacheBytes`` (32 MiB:
  token ids per chunk of prompt text, so a prompt sharing a prefix with earlier ones encodes
  only its new part; 0 turns it off; see ``chunked``).
- ``kvEventsConfig``: ``discoverPods`` (true: connect to every pool endpoint's publisher at
  ``tcp://{address}:{podDiscoveryConfig.socketPort}``; false: bind ``zmqEndpoint`` and let
  publishers connect, endpoint taken from the topic ``kv@<host:port>@<model>``),
  ``zmqEndpoint`` ("tcp://*:5557"), ``topicFilter`` ("kv@"), ``podDiscoveryConfig.socketPort``
  (5557); ours: ``endpointTemplate`` (overrides the connect address, ``{address}`` is the
  endpoint's IP) and ``replayTemplate`` (vLLM's replay ROUTER socket, e.g.
  ``tcp://{address}:5558``; without it a gap clears the endpoint's blocks).
- ``loraIds`` (ours): target model name -> the LoRA int id the model server reports in its
  events (vLLM numbers adapters as it loads them; pin them with the order of
  ``--lora-modules``). Models not listed are matched as the base model.
- ``maxPrefixBlocksToMatch`` (ours, 0 = all): longest prefix considered, in blocks.

Caveat: block keys do not see ``cache_salt`` or multimodal inputs (see ``index``), so two
requests with equal text but different salts match each other's blocks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.framework.attributes import PREFIX_MATCH_KEY, PrefixMatch, request_prompt_tokens
from epp.framework.params import Duration, require
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.scheduling import CycleState, SchedulingResult, ScorerCategory
from epp.plugins.kvcache.index import KVBlockIndex
from epp.plugins.kvcache.keys import block_keys
from epp.plugins.kvcache.subscriber import KVEventsSubscriber
from epp.plugins.kvcache.tokenizer import TokenizerPool
from epp.requests.types import InferenceRequest

__all__ = ["PreciseMatch", "PrecisePrefixCacheScorer", "PrecisePrefixParams"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenProcessorConfig:
    block_size: int = 16
    block_size_tokens: int | None = None
    hash_seed: str = ""

    def __post_init__(self) -> None:
        require(self.block_size > 0, "block_size", "must be > 0", self.block_size)
        require(self.block_size_tokens is None or self.block_size_tokens > 0, "block_size_tokens",
                "must be > 0", self.block_size_tokens)

    @property
    def tokens_per_block(self) -> int:
        return self.block_size_tokens or self.block_size


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefixStoreConfig:
    cache_size: int = 500_000
    block_size: int = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class InMemoryConfig:
    size: int = 100_000_000
    pod_cache_size: int = 10

    def __post_init__(self) -> None:
        require(self.size > 0, "size", "must be > 0", self.size)


@dataclass(frozen=True, slots=True, kw_only=True)
class KVBlockIndexConfig:
    in_memory_config: InMemoryConfig = field(default_factory=InMemoryConfig)
    enable_metrics: bool = False
    metrics_logging_interval: Duration = Duration(0.0)
    cost_aware_memory_config: dict[str, Any] | None = None
    redis_config: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HFTokenizerConfig:
    enabled: bool = True
    hugging_face_token: str = ""
    tokenizers_cache_dir: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalTokenizerConfig:
    auto_discovery_dir: str = ""
    auto_discovery_tokenizer_file_name: str = "tokenizer.json"
    model_tokenizer_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for model, path in self.model_tokenizer_map.items():
            require(isinstance(path, str) and bool(path), f"modelTokenizerMap.{model}", "must be a file path",
                    path)


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenizersPoolConfig:
    model_name: str = ""
    workers_count: int = 5
    min_prefix_overlap_ratio: float = 0.8
    hf: HFTokenizerConfig = field(default_factory=HFTokenizerConfig)
    local: LocalTokenizerConfig = field(default_factory=LocalTokenizerConfig)
    remote_tokenize: bool = True
    remote_timeout: Duration = Duration(0.5)
    cache_size: int = 4096
    chunk_cache_bytes: int = 32 << 20

    def __post_init__(self) -> None:
        require(self.workers_count > 0, "workers_count", "must be > 0", self.workers_count)
        require(self.remote_timeout > 0, "remote_timeout", "must be > 0", self.remote_timeout)
        require(self.cache_size >= 0, "cache_size", "must be >= 0", self.cache_size)
        require(self.chunk_cache_bytes >= 0, "chunk_cache_bytes", "must be >= 0", self.chunk_cache_bytes)


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexerConfig:
    prefix_store_config: PrefixStoreConfig = field(default_factory=PrefixStoreConfig)
    kv_block_index_config: KVBlockIndexConfig = field(default_factory=KVBlockIndexConfig)
    tokenizers_pool_config: TokenizersPoolConfig = field(default_factory=TokenizersPoolConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class PodDiscoveryConfig:
    socket_port: int = 5557

    def __post_init__(self) -> None:
        require(0 < self.socket_port < 65536, "socket_port", "must be a TCP port", self.socket_port)


@dataclass(frozen=True, slots=True, kw_only=True)
class KVEventsConfig:
    zmq_endpoint: str = "tcp://*:5557"
    topic_filter: str = "kv@"
    concurrency: int = 4
    discover_pods: bool = True
    pod_discovery_config: PodDiscoveryConfig = field(default_factory=PodDiscoveryConfig)
    endpoint_template: str = ""
    replay_template: str = ""

    def __post_init__(self) -> None:
        require(not self.endpoint_template or "{address}" in self.endpoint_template, "endpoint_template",
                "must contain {address}", self.endpoint_template)

    def connect_template(self) -> str:
        return self.endpoint_template or f"tcp://{{address}}:{self.pod_discovery_config.socket_port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PrecisePrefixParams:
    token_processor_config: TokenProcessorConfig = field(default_factory=TokenProcessorConfig)
    indexer_config: IndexerConfig = field(default_factory=IndexerConfig)
    kv_events_config: KVEventsConfig = field(default_factory=KVEventsConfig)
    speculative_indexing: bool = False
    speculative_ttl: Duration = field(default=Duration(2.0), metadata={"key": "speculativeTTL"})
    max_blocks_per_endpoint: int = 0
    max_prefix_blocks_to_match: int = 0
    lora_ids: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.max_blocks_per_endpoint >= 0, "max_blocks_per_endpoint", "must be >= 0",
                self.max_blocks_per_endpoint)
        require(self.max_prefix_blocks_to_match >= 0, "max_prefix_blocks_to_match", "must be >= 0",
                self.max_prefix_blocks_to_match)
        require(self.speculative_ttl > 0, "speculative_ttl", "must be > 0", self.speculative_ttl)
        for model, lora_id in self.lora_ids.items():
            require(type(lora_id) is int and lora_id > 0, f"loraIds.{model}", "must be a positive integer",
                    lora_id)

    def blocks_per_endpoint(self) -> int:
        if self.max_blocks_per_endpoint:
            return self.max_blocks_per_endpoint
        return min(self.indexer_config.kv_block_index_config.in_memory_config.size, 1_000_000)


@dataclass(frozen=True, slots=True)
class PreciseMatch:
    """Per endpoint, the fraction of the prompt's full blocks it holds as a leading run."""

    fractions: Mapping[str, float]
    prompt_tokens: int


class PrecisePrefixCacheScorer(BasePlugin):
    """Scores endpoints by the leading prompt blocks their KV-cache events say they hold."""

    TYPE = "precise-prefix-cache-scorer"
    PARAMS = PrecisePrefixParams
    params: PrecisePrefixParams

    def __init__(self, name: str, params: PrecisePrefixParams | None, handle: Handle) -> None:
        super().__init__(name, params or PrecisePrefixParams(), handle)
        p = self.params
        self._state_key = f"{self.TYPE}/{name}"
        self._warn_ignored()
        pool_config = p.indexer_config.tokenizers_pool_config
        local = pool_config.local
        self.tokenizers = TokenizerPool(
            model_dir=Path(local.auto_discovery_dir) if local.auto_discovery_dir else None,
            model_paths={m: Path(path) for m, path in local.model_tokenizer_map.items()},
            file_name=local.auto_discovery_tokenizer_file_name, workers=pool_config.workers_count,
            cache_size=pool_config.cache_size, remote=pool_config.remote_tokenize,
            remote_timeout=pool_config.remote_timeout, chunk_cache_bytes=pool_config.chunk_cache_bytes)
        self.index = KVBlockIndex(p.blocks_per_endpoint())
        self._events = p.kv_events_config
        self._subscriber: KVEventsSubscriber | None = None
        self._pool = handle.pool
        self._attached = False
        # Wall time PrepareData held each request (tokenizing, keys, matching): the latency this
        # scorer adds, reported in /debug/sizes so a benchmark can read it from the running picker.
        self._prepared = 0
        self._prepare_seconds = 0.0

    def _warn_ignored(self) -> None:
        p = self.params
        ignored = []
        if p.token_processor_config.hash_seed:
            ignored.append("tokenProcessorConfig.hashSeed (block keys never reproduce vLLM's hash)")
        kv_config = p.indexer_config.kv_block_index_config
        if kv_config.redis_config is not None or kv_config.cost_aware_memory_config is not None:
            ignored.append("kvBlockIndexConfig redis/costAware backends (the index is in memory)")
        hf = p.indexer_config.tokenizers_pool_config.hf
        if hf.hugging_face_token or hf.tokenizers_cache_dir:
            ignored.append("tokenizersPoolConfig.hf (nothing is downloaded; use local or /tokenize)")
        for what in ignored:
            log.warning("%s: ignoring %s", self.typed_name, what)

    def category(self) -> ScorerCategory:
        return ScorerCategory.AFFINITY

    def _model_for(self, request: InferenceRequest) -> str:
        model = request.target_model
        fallback = self.params.indexer_config.tokenizers_pool_config.model_name
        if fallback and self.tokenizers.tokenizer_path(model) is None:
            return fallback
        return model

    async def prepare_data(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> None:
        started = time.perf_counter()
        try:
            match = await self._match(request, endpoints)
        except Exception:  # a scorer input must never fail the request; neutral scores instead
            log.exception("%s: matching the prompt failed", self.typed_name)
            match = PreciseMatch({}, 0)
        self._prepared += 1
        self._prepare_seconds += time.perf_counter() - started
        cycle[self._state_key] = match
        if cycle.get(PREFIX_MATCH_KEY) is None and match.fractions:
            # Without the approximate producer, prefill-load-scorer and the in-flight backlog
            # would count every prompt as fully uncached everywhere, and so push requests away
            # from the replica that holds (or is prefilling) their prefix. Not declared in
            # PRODUCES: a configured approximate producer keeps its own data (it runs first or
            # overwrites this). In the estimated tokens those consumers use.
            estimated = request_prompt_tokens(request)
            cycle[PREFIX_MATCH_KEY] = PrefixMatch(
                estimated, 1, {ep: int(fraction * estimated) for ep, fraction in match.fractions.items()})

    def pre_request(self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult) -> None:
        """Speculative indexing: the chosen endpoints will hold this prompt's blocks once it is prefilled."""
        keys_by_endpoint = request.plugin_state.pop(self._state_key, None)
        if not self.params.speculative_indexing or not isinstance(keys_by_endpoint, dict):
            return
        try:
            chosen = {ep.name for profile in result.profile_results.values() if profile is not None
                      for ep in profile.endpoints[:1]}
        except Exception:  # never fail a routed request for a guess
            log.exception("%s: reading the routing result failed", self.typed_name)
            return
        ttl = float(self.params.speculative_ttl)
        for name in chosen:
            keys = keys_by_endpoint.get(name)
            if keys:
                self.index.speculate(name, keys, ttl)

    async def _match(self, request: InferenceRequest, endpoints: list[Endpoint]) -> PreciseMatch:
        tokens = await self.tokenizers.tokenize(self._model_for(request), str(request.api), request.body,
                                                [ep.metadata.hostport for ep in endpoints])
        if not tokens:
            return PreciseMatch({}, 0)
        lora_id = self.params.lora_ids.get(request.target_model)
        limit = self.params.max_prefix_blocks_to_match or None
        default_size = self.params.token_processor_config.tokens_per_block
        by_size: dict[int, list[str]] = {}
        for ep in endpoints:
            by_size.setdefault(self.index.block_size(ep.name) or default_size, []).append(ep.name)
        fractions: dict[str, float] = {}
        keys_by_endpoint: dict[str, list[int]] = {}
        for size, names in by_size.items():
            keys = block_keys(tokens, size, lora_id, limit=limit)
            if not keys:
                continue
            for endpoint, matched in self.index.match(keys, names).items():
                fractions[endpoint] = matched / len(keys)
                keys_by_endpoint[endpoint] = keys
        if self.params.speculative_indexing:
            # Kept for PreRequest, which learns where the request went.
            request.plugin_state[self._state_key] = keys_by_endpoint
        return PreciseMatch(fractions, len(tokens))

    def score(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> Sequence[float]:
        match = cycle.get(self._state_key)
        if not isinstance(match, PreciseMatch):
            return [0.0] * len(endpoints)
        return [match.fractions.get(ep.name, 0.0) for ep in endpoints]

    async def run(self) -> None:
        """Background work: follow the model servers' KV events until cancelled.

        Sockets open here, not when the config is loaded, so validating a config (tests,
        ``epp recipe``, ``epp bundle``) never touches the network."""
        subscriber = self.subscriber
        if not self._attached:
            # Follows the pool: a socket per endpoint in connect mode, topic aliases in bind
            # mode, and the index purged as endpoints leave.
            self._attached = True
            subscriber.attach(self._pool)
        try:
            await subscriber.run()
        finally:
            await self.tokenizers.aclose()

    @property
    def subscriber(self) -> KVEventsSubscriber:
        """Built on first use (bind mode binds at construction)."""
        if self._subscriber is None:
            events = self._events
            if events.discover_pods:
                self._subscriber = KVEventsSubscriber(
                    self.index, mode="connect", endpoint_template=events.connect_template(),
                    topic=events.topic_filter, replay_template=events.replay_template or None)
            else:
                self._subscriber = KVEventsSubscriber(
                    self.index, mode="bind", bind_address=events.zmq_endpoint,
                    topic=events.topic_filter, replay_template=events.replay_template or None)
        return self._subscriber

    def close(self) -> None:
        if self._subscriber is not None:
            self._subscriber.close()
        self.tokenizers.close()

    def endpoint_stats(self, name: str) -> dict[str, Any]:
        """What the index knows about one endpoint, for ``/debug/endpoints``."""
        return self.index.stats(name)

    def debug_sizes(self) -> dict[str, int]:
        return {**self.index.debug_sizes(), "tokenizedPrompts": len(self.tokenizers), **self.tokenizers.chunk_stats(),
                "preparedRequests": self._prepared, "prepareMicrosTotal": int(self._prepare_seconds * 1e6)}
