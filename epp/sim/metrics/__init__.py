"""Prometheus pages of the simulated servers: vLLM's or SGLang's names, rendered cheaply."""

from __future__ import annotations

from epp.sim.config import EngineKind, SimConfig
from epp.sim.metrics.sglang import SglangMetrics
from epp.sim.metrics.sink import EngineView, MetricsSink
from epp.sim.metrics.vllm import VllmMetrics

__all__ = ["EngineView", "MetricsSink", "SglangMetrics", "VllmMetrics", "build_metrics"]


def build_metrics(config: SimConfig, view: EngineView) -> MetricsSink:
    """The metrics page matching ``config.engine``."""
    match config.engine:
        case EngineKind.VLLM:
            return VllmMetrics(config, view, disjoint_lora_lists=config.disjoint_lora_lists)
        case EngineKind.SGLANG:
            return SglangMetrics(config, view)
