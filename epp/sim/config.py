"""Every knob of one simulated model server, with its default and where the default comes from.

A ``SimConfig`` describes one replica. The CLI builds one per ``--replicas`` entry; tests and
benchmarks build them directly. All defaults equal the CLI defaults, and each one is either
vLLM's own default on an 80 GB H100 or an estimate for Llama-3.1-8B (bf16) on one H100 SXM;
``docs/simulator.md`` shows the arithmetic behind every estimate.

Timing model (simulated seconds; see ``cost.py``)::

    step = step_base
         + prefill_per_token      * new_prefill_tokens
         + prefill_attn_per_pair  * sum(new * (cached_ctx + new / 2))
         + decode_per_seq         * decode_batch
         + decode_per_ctx_token   * sum(context of decoding sequences)
    wall = step * speed * time_scale
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field, replace

from epp.errors import ConfigError
from epp.sim.gauge_values import check_name, check_value
from epp.sim.kv_events_config import KVEventsSettings

__all__ = [
    "DEFAULT_MODEL",
    "ConfigError",
    "EngineKind",
    "LoraModule",
    "SimConfig",
]

# The model the simulator pretends to serve unless told otherwise; the defaults below are
# estimates for it.
DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"


class EngineKind(enum.Enum):
    """Which real server's metric names and info endpoints the replica imitates."""

    VLLM = "vllm"
    SGLANG = "sglang"


@dataclass(frozen=True, slots=True)
class LoraModule:
    """A LoRA adapter known at start-up (``--lora-modules name=path``)."""

    name: str
    path: str

    @classmethod
    def parse(cls, text: str) -> LoraModule:
        """Parse vLLM's ``name=path`` or JSON ``{"name": ..., "path": ...}`` forms.

        A bare name uses itself as the path.
        """
        if text.lstrip().startswith("{"):
            try:
                data = json.loads(text)
                return cls(name=str(data["name"]), path=str(data["path"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError("lora_modules", 'expected {"name": ..., "path": ...}', text) from exc
        name, sep, path = text.partition("=")
        if not name:
            raise ConfigError("lora_modules", "expected name=path", text)
        return cls(name=name, path=path if sep else name)


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """All knobs of one replica. Frozen: a running server never changes its configuration.

    Fields are grouped as the CLI groups them. Times are simulated seconds unless the name
    says ``wall``; ``speed`` and ``time_scale`` convert simulated time to wall-clock time.
    """

    # --- identity and network -------------------------------------------------------------
    model: str = DEFAULT_MODEL
    served_model_name: tuple[str, ...] = ()  # vLLM: defaults to --model
    host: str = "127.0.0.1"
    port: int = 8000  # vLLM's default port; 0 binds an ephemeral port
    engine: EngineKind = EngineKind.VLLM
    replica_index: int = 0  # position in --replicas; only used in logs and ids

    # --- engine limits (vLLM names) ---------------------------------------------------------
    max_num_seqs: int = 1024  # vLLM default on GPUs with >= 70 GiB (get_batch_defaults)
    max_num_batched_tokens: int = 8192  # vLLM default for the API server on H100
    max_model_len: int = 131072  # Llama-3.1 max_position_embeddings
    block_size: int = 16  # vLLM default block size on CUDA
    num_gpu_blocks: int = 27900  # estimate: ~54.5 GiB of KV / 2 MiB per block
    enable_prefix_caching: bool = True  # vLLM V1 default
    max_loras: int = 1  # vLLM default
    lora_modules: tuple[LoraModule, ...] = ()
    # vLLM serves adapters (and emits vllm:lora_requests_info) only with --enable-lora; the
    # simulator also takes --lora-modules alone as enabling it.
    enable_lora: bool = False
    # Older vLLM's vllm:lora_requests_info: running and waiting adapters in separate lists
    # (0.32 lists every adapter with a request in both).
    disjoint_lora_lists: bool = False
    seed: int = 0  # vLLM's default seed
    stream_interval: int = 1  # tokens per streamed chunk (vLLM --stream-interval)
    default_max_tokens: int = 128  # output length when a request sets no max_tokens

    # --- timing (simulated seconds) -----------------------------------------------------------
    step_base: float = 6.0e-3  # one forward pass reads 16 GB of weights at ~2.7 TB/s
    prefill_per_token: float = 4.0e-5  # 16 GFLOP/token at ~40 % of 989 TFLOPS
    prefill_attn_per_pair: float = 1.3e-9  # 0.5 MFLOP per (query, key) pair at the same rate
    decode_per_seq: float = 3.0e-5  # per-sequence compute and sampling in a decode step
    decode_per_ctx_token: float = 5.0e-8  # 128 KiB of KV read per context token at ~2.7 TB/s
    lora_load_time: float = 0.05  # bring an adapter into a GPU slot
    time_scale: float = 1.0  # wall seconds per simulated second; 0.1 = ten times faster
    speed: float = 1.0  # latency multiplier of this replica; 2.0 = every latency doubled

    # --- failure injection ---------------------------------------------------------------------
    fail_rate: float = 0.0  # probability that an inference request is answered with a 500
    metrics_delay: float = 0.0  # wall seconds added before every /metrics answer

    # --- custom metrics ---------------------------------------------------------------------------
    custom_gauges: tuple[tuple[str, float], ...] = ()  # (name, value) gauges added to /metrics

    # --- KV-cache events and tokenizer ------------------------------------------------------------
    # Publisher settings shared by all replicas (each offsets its bound ports by replica_index);
    # None: no events.
    kv_events: KVEventsSettings | None = None
    tokenizer_path: str | None = None  # a Hugging Face tokenizer.json; None: the built-in approximation

    # --- derived --------------------------------------------------------------------------------
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = self.served_model_name or (self.model,)
        object.__setattr__(self, "_names", names)
        self._validate()

    @property
    def served_names(self) -> tuple[str, ...]:
        """Names the base model answers to; the first one labels the metrics."""
        return self._names

    @property
    def model_name(self) -> str:
        """The ``model_name`` metric label and the ``model`` field of responses."""
        return self._names[0]

    @property
    def wall_factor(self) -> float:
        """Wall-clock seconds per simulated second for this replica."""
        return self.speed * self.time_scale

    def with_overrides(self, **changes: object) -> SimConfig:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def _validate(self) -> None:
        positive_ints = (
            "max_num_seqs",
            "max_num_batched_tokens",
            "max_model_len",
            "block_size",
            "num_gpu_blocks",
            "stream_interval",
            "default_max_tokens",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(name, "must be an integer >= 1", value)
        capacity = self.num_gpu_blocks * self.block_size
        if self.max_model_len > capacity:
            # vLLM refuses to start when one sequence of max_model_len cannot fit in the KV cache.
            raise ConfigError("max_model_len", f"exceeds the KV cache ({self.num_gpu_blocks} blocks x "
                              f"{self.block_size} tokens = {capacity}); lower it or raise num_gpu_blocks",
                              self.max_model_len)
        if self.max_loras < 0:
            raise ConfigError("max_loras", "must be >= 0", self.max_loras)
        if self.lora_modules and self.max_loras < 1:
            raise ConfigError("max_loras", "must be >= 1 when LoRA modules are given", self.max_loras)
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", "must be in [0, 65535]", self.port)
        non_negative = (
            "step_base",
            "prefill_per_token",
            "prefill_attn_per_pair",
            "decode_per_seq",
            "decode_per_ctx_token",
            "lora_load_time",
            "metrics_delay",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(name, "must be >= 0", getattr(self, name))
        for name in ("time_scale", "speed"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, "must be > 0", getattr(self, name))
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ConfigError("fail_rate", "must be in [0, 1]", self.fail_rate)
        names = [m.name for m in self.lora_modules]
        if len(set(names)) != len(names):
            raise ConfigError("lora_modules", "adapter names must be unique", names)
        clash = set(names) & set(self._names)
        if clash:
            raise ConfigError("lora_modules", "an adapter may not share a served model name", sorted(clash))
        gauge_names = [name for name, _ in self.custom_gauges]
        if len(set(gauge_names)) != len(gauge_names):
            raise ConfigError("custom_gauges", "gauge names must be unique", gauge_names)
        for name, value in self.custom_gauges:
            try:
                check_name(name)
                check_value(value)
            except ValueError as exc:
                raise ConfigError("custom_gauges", str(exc), (name, value)) from exc
