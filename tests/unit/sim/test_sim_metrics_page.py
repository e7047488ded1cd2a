"""The Prometheus pages: vLLM and SGLang names, types and labels, valid text, realistic size."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from epp.sim.config import EngineKind, LoraModule, SimConfig
from epp.sim.kv_cache import chain_seed
from epp.sim.metrics import SglangMetrics, VllmMetrics, build_metrics
from epp.sim.metrics.prom import Counter, Gauge, Histogram, build_1_2_5_buckets
from epp.sim.request import SimRequest
from epp.sim.scheduler import StepPlan


@dataclass
class FakeView:
    num_running: int = 3
    num_waiting: int = 2
    usage: float = 0.25
    running: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)  # waiting again after being scheduled

    def kv_usage(self) -> float:
        return self.usage

    def kv_used_blocks(self) -> int:
        return 10

    def running_loras(self) -> list[str]:
        return self.running

    def waiting_loras(self) -> list[str]:
        return self.waiting

    def scheduled_loras(self) -> list[str]:
        return sorted(set(self.running) | set(self.preempted))


def families(page: bytes) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(page.decode())}


def finished_request(arrival: float = 0.0) -> SimRequest:
    req = SimRequest(request_id="r", token_ids=list(range(40)), num_prompt=30, max_tokens=10, lora=None,
                     hash_seed=chain_seed(None, None), arrival=arrival, rng=random.Random(0))
    req.first_scheduled, req.first_token, req.last_token, req.cached_tokens = 0.01, 0.05, 0.09, 16
    return req


def test_vllm_page_parses_and_has_the_names_types_and_labels_routers_read() -> None:
    view = FakeView()
    metrics = VllmMetrics(SimConfig(), view)
    fams = families(metrics.render())
    expected = {
        "vllm:num_requests_running": "gauge", "vllm:num_requests_waiting": "gauge",
        "vllm:kv_cache_usage_perc": "gauge", "vllm:prefix_cache_queries": "counter",
        "vllm:prefix_cache_hits": "counter", "vllm:cache_config_info": "gauge", "vllm:prompt_tokens": "counter",
        "vllm:generation_tokens": "counter",
        "vllm:time_to_first_token_seconds": "histogram", "vllm:inter_token_latency_seconds": "histogram",
        "vllm:e2e_request_latency_seconds": "histogram", "vllm:request_queue_time_seconds": "histogram",
        "process_cpu_seconds_total": "counter",
    }
    for name, kind in expected.items():
        parsed = name.removesuffix("_total") if kind == "counter" else name
        assert fams[parsed].type == kind, name
    running = fams["vllm:num_requests_running"].samples[0]
    assert running.value == 3 and running.labels == {"model_name": SimConfig().model_name, "engine": "0"}
    assert fams["vllm:kv_cache_usage_perc"].samples[0].value == 0.25
    cache = fams["vllm:cache_config_info"].samples[0].labels
    assert cache["block_size"] == "16" and cache["num_gpu_blocks"] == str(SimConfig().num_gpu_blocks)
    ttft = fams["vllm:time_to_first_token_seconds"]
    bounds = [s.labels["le"] for s in ttft.samples if s.name.endswith("_bucket")]
    assert bounds[:3] == ["0.001", "0.005", "0.01"] and bounds[-1] == "+Inf"


def test_vllm_page_size_is_close_to_a_real_one() -> None:
    page = VllmMetrics(SimConfig(), FakeView()).render()
    assert 40_000 <= len(page) <= 60_000


def test_events_move_counters_and_histograms() -> None:
    metrics = VllmMetrics(SimConfig(), FakeView())
    plan = StepPlan(prefix_queries=30, prefix_hits=16, preempted=1)
    metrics.on_step(plan, 0.05)
    req = finished_request()
    metrics.on_token(req, 0.05)  # first token: req.first_token == now
    metrics.on_token(req, 0.09)
    metrics.on_finished(req, "length", 0.1)
    fams = families(metrics.render())

    def value(sample: str, **labels: str) -> float:
        family = sample.removesuffix("_total").removesuffix("_count").removesuffix("_bucket")
        return next(s.value for s in fams[family].samples
                    if s.name == sample and labels.items() <= s.labels.items())

    assert value("vllm:prefix_cache_queries_total") == 30
    assert value("vllm:prefix_cache_hits_total") == 16
    assert value("vllm:num_preemptions_total") == 1
    assert value("vllm:generation_tokens_total") == 2
    assert value("vllm:prompt_tokens_total") == 30
    assert value("vllm:request_success_total", finished_reason="length") == 1
    assert value("vllm:time_to_first_token_seconds_count") == 1
    assert value("vllm:time_to_first_token_seconds_bucket", le="0.06") == 1
    assert value("vllm:time_to_first_token_seconds_bucket", le="0.04") == 0
    assert value("vllm:inter_token_latency_seconds_count") == 1


LORA = (LoraModule("sql", "/a/sql"), LoraModule("chat", "/a/chat"))


def lora_samples(metrics: VllmMetrics) -> list[Any]:
    return list(families(metrics.render())["vllm:lora_requests_info"].samples)


def newest_labels(metrics: VllmMetrics) -> list[dict[str, str]]:
    """Label sets of the newest samples (two rendered within one clock tick tie)."""
    samples = lora_samples(metrics)
    top = max(s.value for s in samples)
    return [s.labels for s in samples if s.value == top]


def test_lora_info_is_absent_without_lora_and_has_no_sample_before_the_first_step() -> None:
    assert "vllm:lora_requests_info" not in families(VllmMetrics(SimConfig(), FakeView()).render())
    metrics = VllmMetrics(SimConfig(max_loras=2, lora_modules=LORA), FakeView(waiting=["sql"]))
    page = metrics.render().decode()
    assert "# TYPE vllm:lora_requests_info gauge" in page
    assert lora_samples(metrics) == []
    metrics.on_step(StepPlan(), 1.0)
    assert len(lora_samples(metrics)) == 1


def test_lora_info_lists_every_scheduled_adapter_in_both_labels_as_vllm_0_32_does() -> None:
    view = FakeView()
    metrics = VllmMetrics(SimConfig(max_loras=2, lora_modules=LORA), view)
    metrics.on_step(StepPlan(), 1.0)
    assert [s.labels["running_lora_adapters"] for s in lora_samples(metrics)] == [""]
    view.running, view.waiting = ["sql"], ["chat"]  # chat's request was never scheduled: not listed
    assert len(lora_samples(metrics)) == 2  # the idle label set stays on the page, as in prometheus_client
    assert {"max_lora": "2", "running_lora_adapters": "sql", "waiting_lora_adapters": "sql"} in newest_labels(metrics)
    view.running, view.waiting, view.preempted = ["sql"], ["chat"], ["chat"]  # chat ran, then was preempted
    assert {"max_lora": "2", "running_lora_adapters": "sql,chat",  # in the order they were first listed
            "waiting_lora_adapters": "sql,chat"} in newest_labels(metrics)
    view.running, view.waiting, view.preempted = ["sql", "tool"], [], []  # chat finished; tool came after sql
    assert {"max_lora": "2", "running_lora_adapters": "sql,tool",
            "waiting_lora_adapters": "sql,tool"} in newest_labels(metrics)


def test_lora_info_can_show_older_vllm_disjoint_lists() -> None:
    view = FakeView()
    metrics = VllmMetrics(SimConfig(max_loras=2, lora_modules=LORA), view, disjoint_lora_lists=True)
    metrics.render()
    view.running, view.waiting = ["sql"], ["chat"]
    metrics.on_step(StepPlan(), 1.0)
    assert {"max_lora": "2", "running_lora_adapters": "sql", "waiting_lora_adapters": "chat"} in newest_labels(metrics)


def test_sglang_page_uses_sglang_names() -> None:
    metrics = build_metrics(SimConfig(engine=EngineKind.SGLANG), FakeView())
    assert isinstance(metrics, SglangMetrics)
    fams = families(metrics.render())
    assert fams["sglang:num_queue_reqs"].samples[0].value == 2
    assert fams["sglang:num_running_reqs"].samples[0].value == 3
    assert fams["sglang:token_usage"].samples[0].value == 0.25
    info = fams["sglang:cache_config_info"].samples[0].labels
    assert info["page_size"] == "16" and info["num_pages"] == str(SimConfig().num_gpu_blocks)
    assert not any(name.startswith("vllm:") for name in fams)


def test_unchanged_families_are_not_rendered_again() -> None:
    hist = Histogram("h", "doc", ("a",), ("x",), (1.0, 2.0), created=0.0)
    first = hist.render()
    assert hist.render() is first
    hist.observe(1.5)
    assert hist.render() is not first and 'h_bucket{a="x",le="2.0"} 1.0' in hist.render()


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        (Counter("c", "doc", ("a",), [("1",), ("2",)], created=5.0),
         '# TYPE c_total counter\nc_total{a="1"} 0.0\nc_total{a="2"} 0.0\n# HELP c_created doc\n'),
        (Gauge("g", "doc", ("a",), fn=lambda: [(("x",), 1.5)]), 'g{a="x"} 1.5\n'),
    ],
    ids=["counters list every series with _total", "live gauges read their function"],
)
def test_families_render_prometheus_text(family: object, expected: str) -> None:
    assert expected in family.render()  # type: ignore[attr-defined]


def test_token_buckets_follow_vllm_1_2_5_rule() -> None:
    assert build_1_2_5_buckets(100) == [1, 2, 5, 10, 20, 50, 100]
