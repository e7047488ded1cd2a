"""``parse_series``: the Prometheus text reader that parses only the wanted series."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from epp.datalayer.promtext import Sample, parse_labels, parse_series

# A trimmed vLLM /metrics page: two data-parallel engines, histograms, counters, LoRA and
# cache-info gauges, and a label value with every escape the format has.
VLLM_PAGE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 5.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:num_requests_waiting_by_reason Number of requests waiting, by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 4.0
vllm:num_requests_waiting_by_reason{engine="0",reason="deferred"} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.4375
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0625
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql-lora,chat-lora",waiting_lora_adapters=""} 1.7e+09
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",num_gpu_blocks="27464"} 1.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 123456.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.5"} 40.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf"} 42.0
vllm:time_to_first_token_seconds_count{engine="0"} 42.0
vllm:time_to_first_token_seconds_sum{engine="0"} 7.25
# HELP build_info Escapes in label values.
# TYPE build_info gauge
build_info{path="C:\\\\models\\\\llama",note="say \\"hi\\"\\nbye",empty=""} 1
"""

WANTED = [
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:num_requests_waiting_by_reason",
    "vllm:kv_cache_usage_perc",
    "vllm:lora_requests_info",
    "vllm:cache_config_info",
    "vllm:prompt_tokens_total",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:time_to_first_token_seconds_sum",
    "build_info",
]


def reference_samples(page: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample on the page, grouped by sample name, as prometheus_client parses it."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(page):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def test_a_realistic_page_parses_like_the_prometheus_client_parser() -> None:
    ours = parse_series(VLLM_PAGE, WANTED)
    reference = reference_samples(VLLM_PAGE)
    assert sorted(ours) == sorted(WANTED)
    for name in WANTED:
        assert [(s.labels, s.value) for s in ours[name]] == reference[name], name


def test_label_escapes_are_decoded() -> None:
    (sample,) = parse_series(VLLM_PAGE, ["build_info"])["build_info"]
    assert sample.labels == {"path": "C:\\models\\llama", "note": 'say "hi"\nbye', "empty": ""}


def test_names_match_exactly_not_by_prefix() -> None:
    found = parse_series(VLLM_PAGE, ["vllm:num_requests_waiting"])
    assert [s.labels["engine"] for s in found["vllm:num_requests_waiting"]] == ["0", "1"]
    assert all("reason" not in s.labels for s in found["vllm:num_requests_waiting"])
    assert parse_series(VLLM_PAGE, ["vllm:num_requests"]) == {}
    assert parse_series(VLLM_PAGE, ["vllm:time_to_first_token_seconds"]) == {}


def test_series_missing_from_the_page_are_absent_from_the_result() -> None:
    assert parse_series(VLLM_PAGE, ["sglang:num_queue_reqs", "vllm:kv_cache_usage_perc"]).keys() == {
        "vllm:kv_cache_usage_perc"}
    assert parse_series("", ["a"]) == {}


@pytest.mark.parametrize(
    ("line", "labels", "value"),
    [
        pytest.param("a 1", {}, 1.0, id="no labels and no trailing newline"),
        pytest.param("a{} 2\n", {}, 2.0, id="an empty label set"),
        pytest.param("a\t3\n", {}, 3.0, id="a tab before the value"),
        pytest.param('a{x="1"} 4 1700000000000\n', {"x": "1"}, 4.0, id="a value with a timestamp"),
        pytest.param('a{x="1",} 5\n', {"x": "1"}, 5.0, id="a trailing comma in the label set"),
        pytest.param('a{x="1", y="2"} 6\n', {"x": "1", "y": "2"}, 6.0, id="a space after the comma"),
        pytest.param('a{x="a,b=c}"} 7\n', {"x": "a,b=c}"}, 7.0, id="commas, equals and braces inside a value"),
        pytest.param("a 1.5e-3\n", {}, 0.0015, id="scientific notation"),
        pytest.param("a -2\n", {}, -2.0, id="a negative value"),
    ],
)
def test_sample_lines(line: str, labels: dict[str, str], value: float) -> None:
    assert parse_series(line, ["a"]) == {"a": [Sample(labels, value)]}


@pytest.mark.parametrize(
    ("text", "check"),
    [
        pytest.param("a +Inf\n", lambda v: v == math.inf, id="plus infinity"),
        pytest.param("a -Inf\n", lambda v: v == -math.inf, id="minus infinity"),
        pytest.param("a NaN\n", math.isnan, id="not a number"),
    ],
)
def test_special_float_values(text: str, check: Callable[[float], bool]) -> None:
    (sample,) = parse_series(text, ["a"])["a"]
    assert check(sample.value)


def test_comment_lines_never_match_a_wanted_name() -> None:
    page = "# HELP a help text\n# TYPE a gauge\na 1\n"
    assert parse_series(page, ["a"]) == {"a": [Sample({}, 1.0)]}
    assert parse_series("# HELP a help\n# TYPE a gauge\n", ["a"]) == {}


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('a{x="1"\n', id="an unterminated label set"),
        pytest.param('a{x=1} 2\n', id="an unquoted label value"),
        pytest.param('a{x="1} 2\n', id="an unterminated label value"),
        pytest.param("a \n", id="no value"),
        pytest.param("a many\n", id="a value that is not a number"),
    ],
)
def test_malformed_lines_of_wanted_series_raise(text: str) -> None:
    with pytest.raises(ValueError):
        parse_series(text, ["a"])


def test_malformed_lines_of_other_series_are_not_read() -> None:
    assert parse_series('b{x=1} oops\na 1\n', ["a"]) == {"a": [Sample({}, 1.0)]}


def test_parse_labels_reads_the_inside_of_a_label_set() -> None:
    assert parse_labels('a="1",b="x\\"y",c="\\\\"') == {"a": "1", "b": 'x"y', "c": "\\"}
    assert parse_labels("") == {}
