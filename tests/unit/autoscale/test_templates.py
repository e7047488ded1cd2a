"""Query templates: one-pass rendering, escaping by position, and refusal of what cannot be made safe."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from epp.autoscale.queries import FLOW_CONTROL_QUEUE_SIZE, KV_CACHE_USAGE, pod_queries, prometheus_queries
from epp.autoscale.templates import (
    MetricSelector,
    QueryList,
    QueryTemplate,
    TemplateError,
    check_duration,
    escape_promql_string,
    render,
)

KV = QueryTemplate("kv", "promql",
                   'max by (pod) (max_over_time(vllm:kv_cache_usage_perc{model_name="{model}"}[{window}]))',
                   ("model", "window"), "KV usage")


def unquote_promql(body: str) -> str:
    """Decode a PromQL double-quoted string body the way Prometheus's lexer does (the escapes we emit)."""
    out: list[str] = []
    i = 0
    simple = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}
    while i < len(body):
        ch = body[i]
        assert ch != '"', f"unescaped quote in {body!r}"
        assert ch != "\n", f"raw newline in {body!r}"
        if ch == "\\":
            nxt = body[i + 1]
            if nxt == "x":
                out.append(chr(int(body[i + 2:i + 4], 16)))
                i += 4
                continue
            out.append(simple[nxt])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def string_literals(query: str) -> list[str]:
    return re.findall(r'"((?:[^"\\]|\\.)*)"', query, re.DOTALL)


def test_renders_label_and_duration_values() -> None:
    assert render(KV, {"model": "llama", "window": "1m"}) == \
        'max by (pod) (max_over_time(vllm:kv_cache_usage_perc{model_name="llama"}[1m]))'


def test_extra_parameters_are_ignored() -> None:
    assert render(KV, {"model": "m", "window": "30s", "namespace": "prod"}).endswith('{model_name="m"}[30s]))')


def test_missing_parameter_is_named() -> None:
    with pytest.raises(TemplateError, match="missing required parameter 'window'"):
        render(KV, {"model": "m"})


def test_undeclared_placeholder_is_named_when_the_template_is_built() -> None:
    with pytest.raises(TemplateError, match=r"unknown placeholder \{namespace\}"):
        QueryTemplate("q", "promql", 'x{model_name="{model}",namespace="{namespace}"}', ("model",))


def test_declared_but_unused_parameter_is_refused() -> None:
    with pytest.raises(TemplateError, match="'window' is declared but not in the template"):
        QueryTemplate("q", "promql", 'x{model_name="{model}"}', ("model", "window"))


def test_label_matchers_and_regex_quantifiers_are_not_placeholders() -> None:
    template = QueryTemplate("q", "promql", 'x{pod=~"a{2,3}",model_name="{model}"}', ("model",))
    assert render(template, {"model": "m"}) == 'x{pod=~"a{2,3}",model_name="m"}'


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ('"} or vector(1) #', '\\"} or vector(1) #'),
        ("a\nb", "a\\nb"),
        ("back\\slash", "back\\\\slash"),
        ('\\"', '\\\\\\"'),
        ("tab\there\r", "tab\\there\\r"),
        ("nul\x00bell\x07del\x7f", "nul\\x00bell\\x07del\\x7f"),
        ("ünïcode ✓", "ünïcode ✓"),
    ],
    ids=["close-and-inject", "newline", "backslash", "escaped-quote", "tab-cr", "controls", "unicode"],
)
def test_label_values_are_escaped(value: str, escaped: str) -> None:
    query = render(KV, {"model": value, "window": "5m"})
    assert f'model_name="{escaped}"' in query
    # The whole query still has exactly one string literal, which decodes back to the value.
    assert [unquote_promql(s) for s in string_literals(query)] == [value]


def test_a_value_holding_a_placeholder_is_not_expanded_again() -> None:
    query = render(KV, {"model": "{window}", "window": "5m"})
    assert 'model_name="{window}"' in query
    assert query.endswith("[5m]))")


def test_a_regex_matcher_value_matches_itself_literally() -> None:
    template = QueryTemplate("q", "promql", 'x{pod=~"{pod}"}', ("pod",))
    query = render(template, {"pod": 'a.b|.*"'})
    body = unquote_promql(string_literals(query)[0])
    assert body == 'a\\.b\\|\\.\\*"'
    assert re.fullmatch(body, 'a.b|.*"') and not re.fullmatch(body, "axb")


@pytest.mark.parametrize("window", ["5m", "1h30m", "500ms", "2d", "1y", "90s"])
def test_durations_are_accepted(window: str) -> None:
    assert render(KV, {"model": "m", "window": window}).endswith(f"[{window}]))")


@pytest.mark.parametrize("window", ["", "5", "1.5m", "-1m", "0s", "5m] or vector(1", "5 m", "m5", "5M", "1m1h",
                                    "{window}", "5m\n"])
def test_anything_but_a_positive_duration_is_refused_in_a_range(window: str) -> None:
    with pytest.raises(TemplateError, match="parameter 'window'"):
        render(KV, {"model": "m", "window": window})


def test_offset_takes_a_duration() -> None:
    template = QueryTemplate("q", "promql", "x offset {ago}", ("ago",))
    assert render(template, {"ago": "10m"}) == "x offset 10m"
    with pytest.raises(TemplateError, match="not a Prometheus duration"):
        render(template, {"ago": "10m or y"})


def test_bare_positions_take_only_a_name_or_a_number() -> None:
    template = QueryTemplate("q", "promql", "topk({k}, {metric})", ("k", "metric"))
    assert render(template, {"k": "3", "metric": "vllm:num_requests_running"}) == \
        "topk(3, vllm:num_requests_running)"
    for bad in ("x) or vector(1", "a b", "", 'x{a="b"}'):
        with pytest.raises(TemplateError, match="neither a number nor a name"):
            render(template, {"k": "3", "metric": bad})


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("x{a='{v}'}", "single-quoted"),
        ("x{a=`{v}`}", "backtick"),
        ('x # {v}\n', "comment"),
        ('x{a="\\{v}"}', "backslash"),
        ('x{a="{v}}', "unterminated"),
    ],
)
def test_unsafe_positions_are_refused_when_the_template_is_built(text: str, reason: str) -> None:
    with pytest.raises(TemplateError, match=reason):
        QueryTemplate("q", "promql", text, ("v",))


def test_quotes_inside_strings_do_not_confuse_the_position_scan() -> None:
    template = QueryTemplate("q", "promql", 'x{a="say \\"hi\\" [", b="{v}"}[{w}]', ("v", "w"))
    assert render(template, {"v": '"', "w": "1m"}) == 'x{a="say \\"hi\\" [", b="\\""}[1m]'


def test_a_non_string_value_is_refused() -> None:
    with pytest.raises(TemplateError, match="must be a string"):
        render(KV, {"model": 3, "window": "1m"})  # type: ignore[dict-item]


def test_plain_string_templates_require_all_their_placeholders() -> None:
    assert render('up{job="{job}"}', {"job": 'a"b'}) == 'up{job="a\\"b"}'
    with pytest.raises(TemplateError, match="missing required parameter 'job'"):
        render('up{job="{job}"}', {})


def test_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(TemplateError, match="surrogate"):
        render(KV, {"model": "\ud800", "window": "1m"})


@given(st.text())
def test_any_label_value_stays_inside_its_string(value: str) -> None:
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        return
    query = render(KV, {"model": value, "window": "1m"})
    assert [unquote_promql(s) for s in string_literals(query)] == [value]
    assert query.startswith('max by (pod) (max_over_time(vllm:kv_cache_usage_perc{model_name="')
    assert query.endswith('"}[1m]))')


def test_escape_function_alone() -> None:
    assert escape_promql_string('a\\"\n') == 'a\\\\\\"\\n'


def test_check_duration() -> None:
    assert check_duration("1h") == "1h"
    with pytest.raises(TemplateError, match="must be positive"):
        check_duration("0m")


def test_template_fields_are_checked() -> None:
    with pytest.raises(TemplateError, match="name must not be empty"):
        QueryTemplate("", "promql", "up")
    with pytest.raises(TemplateError, match="type must be"):
        QueryTemplate("q", "sql", "up")  # type: ignore[arg-type]
    with pytest.raises(TemplateError, match="template must not be empty"):
        QueryTemplate("q", "promql", "  ")


def test_metric_templates_must_be_selectors_with_placeholders_in_values_only() -> None:
    with pytest.raises(TemplateError, match="not a metric selector"):
        QueryTemplate("q", "metric", "sum(x)")
    with pytest.raises(TemplateError, match="only in label values"):
        QueryTemplate("q", "metric", "x{a=\"b\"}[{w}]", ("w",))


def test_selector_resolves_raw_values_and_matches_like_promql() -> None:
    selector = MetricSelector.parse('vllm:x{model_name="{model}", pod=~"{pod}.*", stage!="", kind!~"a|b"}')
    resolved = selector.resolve({"model": 'm"\n', "pod": "p.1"})
    assert resolved.name == "vllm:x"
    base = {"model_name": 'm"\n', "pod": "p.1-abc", "stage": "x", "kind": "c"}
    assert resolved.matches(base)
    assert not resolved.matches({**base, "model_name": "m"})
    assert not resolved.matches({**base, "pod": "pX1-abc"})  # the dot of the value is literal
    assert not resolved.matches({k: v for k, v in base.items() if k != "stage"})  # absent = ""
    assert not resolved.matches({**base, "kind": "a"})
    with pytest.raises(TemplateError, match="missing required parameter 'pod'"):
        selector.resolve({"model": "m"})


def test_query_list_keeps_order_and_unique_names() -> None:
    a = QueryTemplate("a", "promql", "up")
    b = QueryTemplate("b", "metric", "vllm:num_requests_waiting")
    queries = QueryList([b, a])
    assert [q.name for q in queries] == ["b", "a"] and queries.names() == ["b", "a"] and len(queries) == 2
    assert queries.get("a") is a and "a" in queries
    with pytest.raises(TemplateError, match="'a' is already registered"):
        queries.register(QueryTemplate("a", "promql", "up"))
    with pytest.raises(KeyError, match="unknown query 'c'; known: b, a"):
        queries.get("c")


def test_default_queries_render_for_a_hostile_model_name() -> None:
    params = {"model": 'x"} or vector(1) #', "window": "1m"}
    kv = render(prometheus_queries().get(KV_CACHE_USAGE), params)
    assert kv == ('max by (pod, pod_name, instance) (max_over_time('
                  'vllm:kv_cache_usage_perc{model_name="x\\"} or vector(1) #"}[1m]))')
    flow = render(prometheus_queries().get(FLOW_CONTROL_QUEUE_SIZE), params)
    assert [unquote_promql(s) for s in string_literals(flow)] == [params["model"], params["model"], ""]
    assert [q.name for q in pod_queries("sglang")] == ["kv_cache_usage", "queue_length", "running_requests"]
    assert pod_queries("sglang").get("queue_length").template == 'sglang:num_queue_reqs{model_name="{model}"}'
