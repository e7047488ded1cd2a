"""Pages and bodies recorded from a real vLLM 0.32.0 (CPU build), read by the picker's own code.

The fixtures (tests/fixtures/vllm-0.32/, README.md there says how each was recorded) carry
real vLLM's exact output into tests that never start vLLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from epp.datalayer.endpoint import Endpoint, EndpointMetadata
from epp.datalayer.pool import EndpointPool
from epp.datalayer.promtext import parse_series
from epp.framework.plugin import Handle
from epp.plugins.datalayer.core_metrics import CoreMetricsExtractor
from epp.plugins.datalayer.metrics_source import ScrapedSeries

FIXTURES = Path(__file__).parent.parent / "fixtures" / "vllm-0.32"
METRICS_PAGES = sorted(p.name for p in FIXTURES.glob("metrics-*.txt"))


def page(name: str) -> str:
    return (FIXTURES / name).read_text()


def scraped_endpoint(name: str) -> Endpoint:
    """A fresh endpoint after one scrape of the recorded page, as the collector would do it."""
    pool = EndpointPool()
    pool.replace_all([EndpointMetadata("vllm", "127.0.0.1", 8000, 8000)])
    endpoint = pool.endpoints()[0]
    extractor = CoreMetricsExtractor("core", None, Handle(pool=pool))
    extractor.extract(ScrapedSeries(parse_series(page(name), extractor.wanted_series(endpoint))), endpoint)
    return endpoint


def test_every_recorded_page_is_there() -> None:
    assert METRICS_PAGES == ["metrics-after-restart.txt", "metrics-before-restart.txt", "metrics-idle-fresh.txt",
                             "metrics-load.txt", "metrics-lora-after-load.txt", "metrics-lora-idle.txt",
                             "metrics-lora-waiting-running.txt", "metrics-wanted-only.txt"]


@pytest.mark.parametrize(("name", "waiting", "running", "kv_usage"), [
    ("metrics-idle-fresh.txt", 0, 0, 0.0),
    ("metrics-load.txt", 0, 12, 0.004883408619216212),
    ("metrics-lora-waiting-running.txt", 2, 4, 0.0004883408619216212),
    ("metrics-lora-after-load.txt", 0, 0, 0.0),
    ("metrics-before-restart.txt", 0, 0, 0.0),
    ("metrics-after-restart.txt", 0, 0, 0.0),
    ("metrics-wanted-only.txt", 0, 0, 0.0),
])
def test_the_picker_reads_load_from_real_vllm_pages(name: str, waiting: int, running: int, kv_usage: float) -> None:
    metrics = scraped_endpoint(name).metrics
    assert (metrics.waiting_queue_size, metrics.running_requests_size) == (waiting, running)
    assert metrics.kv_cache_usage_percent == pytest.approx(kv_usage)
    assert metrics.update_time > 0


@pytest.mark.parametrize("name", METRICS_PAGES)
def test_cpu_vllm_uses_128_token_blocks(name: str) -> None:
    metrics = scraped_endpoint(name).metrics
    # VLLM_CPU_KVCACHE_SPACE=1 GiB; cache_config_info says block_size="128", num_gpu_blocks="8192".
    assert (metrics.cache_block_size, metrics.cache_num_blocks) == (128, 8192)


def test_a_restart_shows_as_a_new_start_time_and_counters_back_at_zero() -> None:
    wanted = ("process_start_time_seconds", "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total")
    before = parse_series(page("metrics-before-restart.txt"), wanted)
    after = parse_series(page("metrics-after-restart.txt"), wanted)
    assert after["process_start_time_seconds"][0].value > before["process_start_time_seconds"][0].value
    assert [before[n][0].value for n in wanted[1:]] == [5632.0, 6636.0]
    assert [after[n][0].value for n in wanted[1:]] == [0.0, 0.0]


def test_vllm_serves_only_the_wanted_series_at_metrics_slash_with_name_filters() -> None:
    # /metrics/?name[]=... reaches prometheus_client's own app, which honours the filter
    # (plain /metrics is another handler that ignores the query and renders everything).
    pool = EndpointPool()
    pool.replace_all([EndpointMetadata("vllm", "127.0.0.1", 8000, 8000)])
    wanted = CoreMetricsExtractor("core", None, Handle(pool=pool)).wanted_series(pool.endpoints()[0])
    filtered = page("metrics-wanted-only.txt")
    names = {line.split("{")[0].split(" ")[0] for line in filtered.splitlines() if line and not line.startswith("#")}
    assert {"vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
            "vllm:cache_config_info"} <= names <= wanted
    assert len(filtered) * 20 < len(page("metrics-after-restart.txt"))


def test_vllm_emits_the_lora_family_only_with_lora_enabled() -> None:
    for name in METRICS_PAGES:
        has_lora = "vllm:lora_requests_info{" in page(name)
        assert has_lora is name.startswith("metrics-lora-"), name


def test_usage_has_null_prompt_token_details_and_the_stream_leaves_them_out() -> None:
    completion = json.loads((FIXTURES / "completion.json").read_text())
    assert completion["usage"] == {"prompt_tokens": 10, "total_tokens": 14, "completion_tokens": 4,
                                   "prompt_tokens_details": None, "completion_tokens_details": None}
    events = [line.removeprefix("data: ") for line in (FIXTURES / "chat-completion-stream.sse").read_text().splitlines()
              if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])
    assert (usage["choices"], usage["usage"]) == ([], {"prompt_tokens": 9, "total_tokens": 12, "completion_tokens": 3})


@pytest.mark.parametrize(("name", "kind", "param", "code"), [
    ("error-unknown-model.json", "NotFoundError", "model", 404),
    ("error-missing-prompt.json", "BadRequestError", "prompt", 400),
    ("error-too-many-tokens.json", "BadRequestError", "max_tokens", 400),
    ("error-bad-json.json", "Bad Request", "body.44", 400),
])
def test_vllm_errors_are_openai_json(name: str, kind: str, param: str, code: int) -> None:
    error = json.loads((FIXTURES / name).read_text())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == (kind, param, code)


def test_unknown_model_error_names_the_valid_aliases() -> None:
    message = json.loads((FIXTURES / "error-unknown-model.json").read_text())["error"]["message"]
    assert message == "The model `nope` does not exist. Valid aliases: /work/vllm-model."


def test_tokenize_answers_ids_with_count_and_max_model_len() -> None:
    assert json.loads((FIXTURES / "tokenize.json").read_text()) == {
        "count": 5, "max_model_len": 2048, "tokens": [1, 11, 0, 0, 0], "token_strs": None}
