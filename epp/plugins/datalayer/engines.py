"""Metric names per model-server engine, as the Go EPP's ``core-metrics-extractor`` knows them.

A spec is ``series`` or ``series{label=value,...}``; an empty spec disables that field.

Three specs are this picker's own, not GIE's: ``prefixCacheHitsSpec`` and
``prefixCacheQueriesSpec`` (the server's lifetime prefix-cache counters, for the hit rate
and restart detection) and ``processStartTimeSpec`` (a change means the server restarted).
vLLM's names are checked against ``vllm/v1/metrics/loggers.py``: the counters are
registered as ``vllm:prefix_cache_hits`` / ``vllm:prefix_cache_queries`` and
``prometheus_client`` exposes them with ``_total``; ``process_start_time_seconds`` comes
from ``prometheus_client``'s process collector. Other engines have none of them here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from epp.errors import ConfigError

__all__ = ["BUILTIN_ENGINES", "EngineConfig", "MetricSpec", "parse_spec"]

_SPEC = re.compile(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s*$")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    series: str
    labels: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if not self.labels:
            return self.series
        return self.series + "{" + ",".join(f"{k}={v}" for k, v in self.labels) + "}"


def parse_spec(text: str, where: str) -> MetricSpec | None:
    if not text.strip():
        return None
    match = _SPEC.match(text)
    if match is None:
        raise ConfigError(where, "expected a metric spec like 'name' or 'name{label=value}'", text)
    labels: list[tuple[str, str]] = []
    for part in filter(None, (p.strip() for p in (match.group(2) or "").split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(where, f"label matcher {part!r} is not label=value", text)
        labels.append((key.strip(), value.strip().strip('"')))
    return MetricSpec(match.group(1), tuple(labels))


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    """Where one engine publishes each field. Field names are the GIE parameter names."""

    name: str
    queued_requests_spec: str = ""
    running_requests_spec: str = ""
    kv_usage_spec: str = ""
    lora_spec: str = ""
    cache_info_spec: str = ""
    cache_block_size_label_name: str = field(default="", metadata={"key": "cacheBlockSizeLabelName"})
    cache_num_blocks_label_name: str = field(default="", metadata={"key": "cacheNumBlocksLabelName"})
    cache_block_size_spec: str = ""
    cache_num_blocks_spec: str = ""
    prefix_cache_hits_spec: str = ""
    prefix_cache_queries_spec: str = ""
    process_start_time_spec: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("name", "engine name must not be empty")
        if self.name == "default":
            raise ConfigError("name", "engine name 'default' is reserved (use defaultEngine to choose one)")
        for attr in ("queued_requests_spec", "running_requests_spec", "kv_usage_spec", "lora_spec",
                     "cache_info_spec", "cache_block_size_spec", "cache_num_blocks_spec", "prefix_cache_hits_spec",
                     "prefix_cache_queries_spec", "process_start_time_spec"):
            parse_spec(getattr(self, attr), attr)


BUILTIN_ENGINES: dict[str, EngineConfig] = {
    "vllm": EngineConfig(
        name="vllm",
        queued_requests_spec="vllm:num_requests_waiting",
        running_requests_spec="vllm:num_requests_running",
        kv_usage_spec="vllm:kv_cache_usage_perc",
        lora_spec="vllm:lora_requests_info",
        cache_info_spec="vllm:cache_config_info",
        cache_block_size_label_name="block_size",
        cache_num_blocks_label_name="num_gpu_blocks",
        prefix_cache_hits_spec="vllm:prefix_cache_hits_total",
        prefix_cache_queries_spec="vllm:prefix_cache_queries_total",
        process_start_time_spec="process_start_time_seconds",
    ),
    "sglang": EngineConfig(
        name="sglang",
        queued_requests_spec="sglang:num_queue_reqs",
        running_requests_spec="sglang:num_running_reqs",
        kv_usage_spec="sglang:token_usage",
        cache_info_spec="sglang:cache_config_info",
        cache_block_size_label_name="page_size",
        cache_num_blocks_label_name="num_pages",
    ),
    "trtllm-serve": EngineConfig(
        name="trtllm-serve",
        queued_requests_spec="trtllm_num_requests_waiting",
        running_requests_spec="trtllm_num_requests_running",
        kv_usage_spec="trtllm_kv_cache_utilization",
        cache_block_size_spec="trtllm_kv_cache_tokens_per_block",
        cache_num_blocks_spec="trtllm_kv_cache_max_blocks",
    ),
    "triton-tensorrt-llm": EngineConfig(
        name="triton-tensorrt-llm",
        queued_requests_spec="nv_trt_llm_request_metrics{request_type=waiting}",
        running_requests_spec="nv_trt_llm_request_metrics{request_type=scheduled}",
        kv_usage_spec="nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction}",
        cache_block_size_spec="nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=tokens_per}",
        cache_num_blocks_spec="nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=max}",
    ),
}
