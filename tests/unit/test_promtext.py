"""``parse_series``: the Prometheus text reader that parses only the wanted series."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
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


# Lines shaped like the examples of the Prometheus exposition-format spec: timestamps
# (one before the epoch), runs of blanks, every label-value escape, +Inf with a
# timestamp, a bare line, a histogram and a summary.
SPEC_PAGE = """\
# HELP api_calls_total Calls served.
# TYPE api_calls_total counter
api_calls_total{verb="get",status="200"} 2048 1395066363000
api_calls_total{verb="get",status="503"}    7 1395066363000

# Escapes in label values.
file_age_seconds{path="D:\\\\DATA\\\\A.BIN",error="missing:\\n\\"A.BIN\\""} 1.458255915e9

bare_gauge 3.25

odd_one{cause="overflow"} +Inf -3982045

# TYPE wait_seconds histogram
wait_seconds_bucket{le="0.25"} 10
wait_seconds_bucket{le="1"} 12
wait_seconds_bucket{le="+Inf"} 13
wait_seconds_sum 9.5
wait_seconds_count 13

# TYPE rpc_micros summary
rpc_micros{quantile="0.5"} 4773
rpc_micros{quantile="0.99"} 76656
rpc_micros_sum 1.7560473e+07
rpc_micros_count 2693
"""

# An OpenMetrics page with exemplars on histogram buckets and on a counter, OpenMetrics
# (seconds, fractional) timestamps, a '}' inside a label value, NaN and -Inf.
OPENMETRICS_PAGE = """\
# TYPE req_latency_seconds histogram
# HELP req_latency_seconds Time to serve a request.
req_latency_seconds_bucket{route="/v1/{id}",le="0.1"} 8 # {trace_id="4bf92f3577b34da6",span_id="00f067aa0ba902b7"} \
0.067 1719913187.631
req_latency_seconds_bucket{route="/v1/{id}",le="+Inf"} 11 # {trace_id="0af7651916cd43dd"} 2.5
req_latency_seconds_count{route="/v1/{id}"} 11
req_latency_seconds_sum{route="/v1/{id}"} 4.25
# TYPE tokens counter
tokens_total{model="m"} 17.0 # {trace_id="KOO5S4vxi0o"} 0.67 1520879607.789
tokens_created{model="m"} 1520430000.123
# TYPE q gauge
q{weird="a\\\\b\\nc \\"d\\""} NaN 1520879607
q{weird="x"} -Inf 1520879607.5
# EOF
"""


def comparable(samples: list[tuple[dict[str, str], float]]) -> list[tuple[dict[str, str], str]]:
    # repr, because NaN never equals NaN.
    return [(labels, repr(float(value))) for labels, value in samples]


@pytest.mark.parametrize(
    ("page", "families"),
    [
        pytest.param(SPEC_PAGE, text_string_to_metric_families, id="prometheus text format"),
        pytest.param(OPENMETRICS_PAGE, openmetrics_families, id="openmetrics with exemplars"),
    ],
)
def test_every_series_of_a_page_parses_like_prometheus_client(page: str, families: Callable[[str], Any]) -> None:
    reference: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in families(page):
        for s in family.samples:
            reference.setdefault(s.name, []).append((dict(s.labels), s.value))
    ours = parse_series(page, reference)
    assert sorted(ours) == sorted(reference)
    for name, samples in reference.items():
        assert comparable([(s.labels, s.value) for s in ours[name]]) == comparable(samples), name


@pytest.mark.parametrize(
    ("line", "labels", "value"),
    [
        pytest.param('a{x="1"} 1 # {trace_id="x"} 0.5 123\n', {"x": "1"}, 1.0, id="an exemplar with a timestamp"),
        pytest.param('a 2 # {trace_id="x"} 0.5\n', {}, 2.0, id="an exemplar on a line without labels"),
        pytest.param('a{x="1"} 3 1520879607.789 # {t="x"} 0.67 1520879607.789\n', {"x": "1"}, 3.0,
                     id="a timestamp then an exemplar"),
        pytest.param('a{x="1"} 4 # {t="}\\"{"} 9\n', {"x": "1"}, 4.0, id="braces and quotes inside the exemplar"),
        pytest.param('a{x="}"} 5 # {t="y"} 9\n', {"x": "}"}, 5.0, id="a brace in a label value and an exemplar"),
        pytest.param('a{le="+Inf"} 6 # {} 1\n', {"le": "+Inf"}, 6.0, id="an exemplar with no labels"),
    ],
)
def test_openmetrics_exemplars_are_skipped(line: str, labels: dict[str, str], value: float) -> None:
    assert parse_series(line, ["a"]) == {"a": [Sample(labels, value)]}


@pytest.mark.parametrize(
    ("line", "labels", "value"),
    [
        pytest.param('a {x="1"} 1\n', {"x": "1"}, 1.0, id="a blank between the name and the label set"),
        pytest.param('a{ x = "1" ,\ty="2" } 2\n', {"x": "1", "y": "2"}, 2.0, id="blanks and tabs inside the set"),
        pytest.param('a{x="1"}\t3\t1700000000000\n', {"x": "1"}, 3.0, id="tabs around value and timestamp"),
        pytest.param("a 4 -3982045\n", {}, 4.0, id="a timestamp before the epoch"),
        pytest.param('a{"service.name"="api"} 5\n', {"service.name": "api"}, 5.0, id="a quoted label name"),
        pytest.param('a{x="C:\\d"} 6\n', {"x": "C:\\d"}, 6.0, id="an unknown escape keeps its backslash"),
        pytest.param('a{x="1"} 7\r\n', {"x": "1"}, 7.0, id="a CRLF line ending"),
        pytest.param('a{x="\\\\"} 8\n', {"x": "\\"}, 8.0, id="an escaped backslash before the closing quote"),
    ],
)
def test_blanks_quoting_and_timestamps(line: str, labels: dict[str, str], value: float) -> None:
    assert parse_series(line, ["a"]) == {"a": [Sample(labels, value)]}


@pytest.mark.parametrize(
    ("text", "check"),
    [
        pytest.param('a{le="+Inf"} +Inf 1395066363000\n', lambda v: v == math.inf, id="plus infinity, timestamped"),
        pytest.param('a{x="1"} -Inf # {t="x"} 1\n', lambda v: v == -math.inf, id="minus infinity, exemplar"),
        pytest.param("a NaN 1520879607.5\n", math.isnan, id="not a number, timestamped"),
    ],
)
def test_special_values_with_labels_timestamps_and_exemplars(text: str, check: Callable[[float], bool]) -> None:
    (sample,) = parse_series(text, ["a"])["a"]
    assert check(sample.value)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('a{x=1,y="2"} 3\n', id="an unquoted value followed by a quoted one"),
        pytest.param('a{x="1"y="2"} 3\n', id="no comma between labels"),
        pytest.param('a{1x="1"} 3\n', id="a label name starting with a digit"),
        pytest.param('a{="1"} 3\n', id="an empty label name"),
        pytest.param("a 1 2 3\n", id="text after the timestamp"),
        pytest.param("a 1 soon\n", id="a timestamp that is not a number"),
        pytest.param("a # {t=\"x\"} 1\n", id="an exemplar but no value"),
        pytest.param('a{x="1"}\n', id="a label set but no value"),
    ],
)
def test_more_malformed_lines_raise(text: str) -> None:
    with pytest.raises(ValueError):
        parse_series(text, ["a"])


def test_a_parse_error_names_the_line() -> None:
    with pytest.raises(ValueError, match=r"a\{x=\"1\"\} many"):
        parse_series('b 1\na{x="1"} many\n', ["a"])


def test_parse_labels_rejects_text_after_the_set() -> None:
    with pytest.raises(ValueError):
        parse_labels('a="1"} b="2"')
