"""``core-metrics-extractor``: turn scraped series into an endpoint's ``Metrics``.

The engine (vLLM, SGLang, trtllm-serve, Triton TensorRT-LLM) is chosen per endpoint
from the label ``engineLabelKey`` (default ``inference.networking.k8s.io/engine-type``),
falling back to ``defaultEngine``. ``engineConfigs`` entries replace the built-in engine
of the same name entirely, or add new engines.

Selection when several series match a spec: queue and running counts are summed (vLLM
emits one series per data-parallel engine), KV usage is averaged, LoRA info takes the
series with the largest value (its value is a timestamp; the newest wins), cache info
takes the first series.

Partial updates: fields whose series are present are updated even when others are
missing. Missing queue/running/KV series are reported as an extraction error (logged once
per transition by the collector); missing LoRA or cache-info series are normal for
servers without LoRA and are not errors (vLLM has no LoRA sample before its first engine
step). LoRA labels are read by ``lora_info`` (vLLM 0.32's merged lists and older split
ones, told apart by the page).

Prefix-cache counters (summed over engines) feed the endpoint's ``HitRateWindow``; the
recent hit rate and the lifetime totals land on ``Metrics``. A restart of the model server
is seen when ``process_start_time_seconds`` changes or those counters go backwards (never
on the first scrape): the new ``Metrics`` is then built from scratch, not on the old
process's values, and ``EndpointPool.restarted`` tells the pool's listeners to drop what
they kept for it (cached prefixes, in-flight load).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from epp.datalayer.endpoint import ENGINE_LABEL, Endpoint, Metrics
from epp.datalayer.promtext import Sample
from epp.errors import ConfigError
from epp.framework.params import require
from epp.framework.plugin import BasePlugin, Handle
from epp.plugins.datalayer.engines import BUILTIN_ENGINES, EngineConfig, MetricSpec, parse_spec
from epp.plugins.datalayer.lora_info import read_lora_info
from epp.plugins.datalayer.metrics_source import ScrapedSeries

__all__ = ["CoreMetricsExtractor", "CoreMetricsParams", "ExtractionError"]

log = logging.getLogger(__name__)


class ExtractionError(Exception):
    """Some required series were missing or malformed; the rest were applied."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreMetricsParams:
    engine_label_key: str = ENGINE_LABEL
    default_engine: str = "vllm"
    engine_configs: list[EngineConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [e.name for e in self.engine_configs]
        require(len(names) == len(set(names)), "engine_configs", "engine names must be unique", names)
        known = set(BUILTIN_ENGINES) | set(names)
        require(self.default_engine in known, "default_engine", f"unknown engine; known: {sorted(known)}",
                self.default_engine)


class _Engine:
    """An engine config with its specs parsed once."""

    def __init__(self, config: EngineConfig) -> None:
        def spec(attr: str) -> MetricSpec | None:
            return parse_spec(getattr(config, attr), f"engineConfigs[{config.name}].{attr}")

        self.name = config.name
        self.queued = spec("queued_requests_spec")
        self.running = spec("running_requests_spec")
        self.kv = spec("kv_usage_spec")
        self.lora = spec("lora_spec")
        self.cache_info = spec("cache_info_spec")
        self.block_size_label = config.cache_block_size_label_name
        self.num_blocks_label = config.cache_num_blocks_label_name
        self.block_size = spec("cache_block_size_spec")
        self.num_blocks = spec("cache_num_blocks_spec")
        self.cache_hits = spec("prefix_cache_hits_spec")
        self.cache_queries = spec("prefix_cache_queries_spec")
        self.start_time = spec("process_start_time_spec")

        # Only this engine's series are looked for on its endpoints' pages.
        self.series = frozenset(s.series for s in (self.queued, self.running, self.kv, self.lora, self.cache_info,
                                                   self.block_size, self.num_blocks, self.cache_hits,
                                                   self.cache_queries, self.start_time) if s is not None)


def _matching(data: ScrapedSeries, spec: MetricSpec) -> list[Sample]:
    samples = data.get(spec.series, ())
    if not spec.labels:
        return list(samples)
    return [s for s in samples if all(s.labels.get(k) == v for k, v in spec.labels)]


def _finite_sum(data: ScrapedSeries, spec: MetricSpec | None) -> float | None:
    if spec is None:
        return None
    values = [s.value for s in _matching(data, spec) if math.isfinite(s.value)]
    return sum(values) if values else None


class CoreMetricsExtractor(BasePlugin):
    """Maps engine-specific metrics (queue, running, KV usage, LoRA, cache info) onto endpoints."""

    TYPE = "core-metrics-extractor"
    PARAMS = CoreMetricsParams
    params: CoreMetricsParams

    def __init__(self, name: str, params: CoreMetricsParams | None, handle: Handle,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, params or CoreMetricsParams(), handle)
        configs = dict(BUILTIN_ENGINES)
        for config in self.params.engine_configs:
            configs[config.name] = config
        try:
            self._engines = {name: _Engine(config) for name, config in configs.items()}
        except ConfigError as exc:
            raise ConfigError(f"engineConfigs.{exc.field}", exc.reason, exc.value) from None
        self._default = self._engines[self.params.default_engine]
        self._clock = clock
        self._pool = handle.pool

    def input_type(self) -> type:
        return ScrapedSeries

    def wanted_series(self, endpoint: Endpoint) -> frozenset[str]:
        return self.engine_for(endpoint).series

    def engine_for(self, endpoint: Endpoint) -> _Engine:
        name = endpoint.metadata.labels.get(self.params.engine_label_key)
        return self._engines.get(name, self._default) if name else self._default

    def extract(self, data: Any, endpoint: Endpoint) -> None:
        engine = self.engine_for(endpoint)
        updates: dict[str, Any] = {}
        missing: list[str] = []
        for attr, spec, combine in (
            ("waiting_queue_size", engine.queued, lambda v: int(sum(v))),
            ("running_requests_size", engine.running, lambda v: int(sum(v))),
            ("kv_cache_usage_percent", engine.kv, lambda v: sum(v) / len(v)),
        ):
            if spec is None:
                continue
            # NaN and infinities parse (the exposition format allows them) but count as no value:
            # one bad series must not stop the others from being applied.
            values = [s.value for s in _matching(data, spec) if math.isfinite(s.value)]
            if values:
                updates[attr] = combine(values)
            else:
                missing.append(str(spec))
        if engine.lora is not None and (samples := _matching(data, engine.lora)):
            lora = read_lora_info(samples)
            updates["active_models"] = lora.running
            updates["waiting_models"] = lora.waiting
            if lora.max_lora is not None:
                updates["max_active_models"] = lora.max_lora
            elif lora.bad_max_lora:
                missing.append(f"{engine.lora} (max_lora={lora.bad_max_lora!r} is not a number)")
        self._cache_info(data, engine, updates)
        restarted, now = self._counters(data, engine, endpoint, updates)
        if updates:
            updates["update_time"] = self._clock() if now is None else now
            # Built on the last scrape, not on the picker's estimate: a new scrape replaces it.
            # After a restart nothing of the old process may survive (its LoRA adapters, say).
            base = Metrics() if restarted else endpoint.scraped_metrics
            endpoint.metrics = replace(base, **updates)
        if restarted:
            log.info("endpoint %s: the model server restarted; dropping what the picker kept for it", endpoint.name)
            self._pool.restarted(endpoint)
        if missing:
            raise ExtractionError(f"engine {engine.name}: series missing or malformed: {', '.join(missing)}")

    def _counters(self, data: ScrapedSeries, engine: _Engine, endpoint: Endpoint,
                  updates: dict[str, Any]) -> tuple[bool, float | None]:
        """Record start time and prefix-cache counters: (did the server restart, the time the counters were read)."""
        previous = endpoint.scraped_metrics
        restarted = False
        start = _finite_sum(data, engine.start_time)
        if start is not None:
            updates["process_start_time"] = start
            if previous.process_start_time and start != previous.process_start_time:
                restarted = True
                endpoint.prefix_cache.clear()
        hits = _finite_sum(data, engine.cache_hits)
        queries = _finite_sum(data, engine.cache_queries)
        now = None
        if hits is not None and queries is not None:
            now = self._clock()
            if endpoint.prefix_cache.observe(now, hits, queries):
                restarted = True
            updates["prefix_cache_hits"] = hits
            updates["prefix_cache_queries"] = queries
            updates["prefix_cache_hit_rate"] = endpoint.prefix_cache.hit_rate
        return restarted, now

    @staticmethod
    def _cache_info(data: ScrapedSeries, engine: _Engine, updates: dict[str, Any]) -> None:
        if engine.cache_info is not None and (samples := _matching(data, engine.cache_info)):
            labels = samples[0].labels
            for attr, label in (("cache_block_size", engine.block_size_label),
                                ("cache_num_blocks", engine.num_blocks_label)):
                if label and label in labels:
                    with contextlib.suppress(ValueError, OverflowError):
                        updates[attr] = int(float(labels[label]))
        for attr, spec in (("cache_block_size", engine.block_size), ("cache_num_blocks", engine.num_blocks)):
            if spec is not None and (samples := _matching(data, spec)) and math.isfinite(samples[0].value):
                updates[attr] = int(samples[0].value)
