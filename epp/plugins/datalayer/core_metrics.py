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
servers without LoRA and are not errors.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from epp.datalayer.endpoint import ENGINE_LABEL, Endpoint
from epp.datalayer.promtext import Sample
from epp.errors import ConfigError
from epp.framework.params import require
from epp.framework.plugin import BasePlugin, Handle
from epp.plugins.datalayer.engines import BUILTIN_ENGINES, EngineConfig, MetricSpec, parse_spec
from epp.plugins.datalayer.metrics_source import ScrapedSeries

__all__ = ["CoreMetricsExtractor", "CoreMetricsParams", "ExtractionError"]


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

        # Only this engine's series are looked for on its endpoints' pages.
        self.series = frozenset(s.series for s in (self.queued, self.running, self.kv, self.lora, self.cache_info,
                                                   self.block_size, self.num_blocks) if s is not None)


def _matching(data: ScrapedSeries, spec: MetricSpec) -> list[Sample]:
    samples = data.get(spec.series, ())
    if not spec.labels:
        return list(samples)
    return [s for s in samples if all(s.labels.get(k) == v for k, v in spec.labels)]


def _csv(text: str) -> frozenset[str]:
    return frozenset(part.strip() for part in text.split(",") if part.strip())


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
            newest = max(samples, key=lambda s: s.value)
            updates["active_models"] = _csv(newest.labels.get("running_lora_adapters", ""))
            updates["waiting_models"] = _csv(newest.labels.get("waiting_lora_adapters", ""))
            max_lora = newest.labels.get("max_lora", "").strip()
            if max_lora:
                try:
                    updates["max_active_models"] = int(float(max_lora))
                except (ValueError, OverflowError):
                    missing.append(f"{engine.lora} (max_lora={max_lora!r} is not a number)")
        self._cache_info(data, engine, updates)
        if updates:
            updates["update_time"] = self._clock()
            # Built on the last scrape, not on the picker's estimate: a new scrape replaces it.
            endpoint.metrics = replace(endpoint.scraped_metrics, **updates)
        if missing:
            raise ExtractionError(f"engine {engine.name}: series missing or malformed: {', '.join(missing)}")

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
