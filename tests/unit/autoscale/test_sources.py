"""Result types, the source registry, and both sources against scripted HTTP answers (httpx.MockTransport).

The real Prometheus server and simulators are in tests/integration/autoscale.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from epp.autoscale.cache import TTLCache
from epp.autoscale.podscrape import PodScrapeSource
from epp.autoscale.prometheus import PrometheusSource
from epp.autoscale.queries import (
    FLOW_CONTROL_QUEUE_SIZE,
    KV_CACHE_USAGE,
    QUEUE_LENGTH,
    picker_pod_queries,
    pod_queries,
    prometheus_queries,
    query_params,
)
from epp.autoscale.sources import MetricsSource, MetricValue, QueryResult, SourceRegistry, replica_of
from epp.autoscale.templates import QueryList, QueryTemplate

PROM = "http://prom.test:9090"
UP = QueryTemplate("up", "promql", 'up{job="{job}"}', ("job",))
ONE = QueryTemplate("one", "promql", "scalar(1)")


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def vector(*series: tuple[dict[str, str], str]) -> dict[str, Any]:
    return {"status": "success",
            "data": {"resultType": "vector",
                     "result": [{"metric": labels, "value": [1700000000.5, value]} for labels, value in series]}}


Handler = Callable[[httpx.Request], Any]


def prom_source(handler: Handler, queries: QueryList | None = None, **kwargs: Any) -> tuple[PrometheusSource,
                                                                                              list[float]]:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    source = PrometheusSource(PROM, queries or QueryList([UP]), client=client, sleep=sleep, **kwargs)
    return source, sleeps


def sent_query(request: httpx.Request) -> str:
    return parse_qs(request.content.decode())["query"][0]


# --- result types and the registry -------------------------------------------------------------------------------

def test_a_result_holds_values_or_an_error_and_nan_means_missing() -> None:
    assert math.isnan(QueryResult("q").first())
    assert math.isnan(QueryResult("q", error="boom").first())
    assert QueryResult("q", (MetricValue({}, 0.0),)).first() == 0.0
    with pytest.raises(ValueError, match="either values or an error"):
        QueryResult("q", (MetricValue({}, 1.0),), error="boom")


def test_replica_keys_prefer_pod_then_pod_name_then_instance() -> None:
    assert replica_of({"pod": "p", "pod_name": "q", "instance": "i"}) == "p"
    assert replica_of({"pod_name": "q", "instance": "i"}) == "q"
    assert replica_of({"instance": "10.0.0.1:8000"}) == "10.0.0.1:8000"
    result = QueryResult("q", (MetricValue({"pod": "a"}, math.nan), MetricValue({"pod": "a"}, 2.0),
                               MetricValue({"pod": "b"}, 1.0), MetricValue({"pod": "b"}, 0.5)))
    assert result.by_replica() == {"a": 2.0, "b": 1.0}
    assert result.by_label("pod") == {"a": 2.0, "b": 0.5}


def test_registry_names_sources_and_refuses_duplicates() -> None:
    registry = SourceRegistry()
    source, _ = prom_source(lambda r: httpx.Response(200, json=vector()))
    assert isinstance(source, MetricsSource)
    registry.register("prometheus", source)
    assert registry.get("prometheus") is source and registry.names() == ["prometheus"]
    with pytest.raises(ValueError, match="'prometheus' is already registered"):
        registry.register("prometheus", source)
    with pytest.raises(ValueError, match="must not be empty"):
        registry.register("", source)
    with pytest.raises(KeyError, match="unknown metrics source 'pods'; known: prometheus"):
        registry.get("pods")


# --- PrometheusSource ----------------------------------------------------------------------------------------------

async def test_vector_results_are_read_and_the_query_is_rendered_safely() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url == f"{PROM}/api/v1/query" and request.method == "POST"
        seen.append(sent_query(request))
        return httpx.Response(200, json=vector(({"pod": "a", "job": "x"}, "1"), ({"pod": "b"}, "NaN")))

    source, _ = prom_source(handler, wall_clock=lambda: 123.0)
    results = await source.refresh({"job": 'x"} or vector(1)'})
    assert seen == ['up{job="x\\"} or vector(1)"}']
    up = results["up"]
    assert up.ok and up.collected_at == 123.0
    assert up.values[0] == MetricValue({"pod": "a", "job": "x"}, 1.0, 1700000000.5)
    assert math.isnan(up.values[1].value)  # NaN is kept, never turned into 0


async def test_scalar_results_have_one_unlabelled_value() -> None:
    source, _ = prom_source(lambda r: httpx.Response(
        200, json={"status": "success", "data": {"resultType": "scalar", "result": [1.5, "+Inf"]}}),
        QueryList([ONE]))
    result = (await source.refresh({}))["one"]
    assert result.values == (MetricValue({}, math.inf, 1.5),)


async def test_matrix_results_are_reported_as_errors() -> None:
    source, _ = prom_source(lambda r: httpx.Response(
        200, json={"status": "success", "data": {"resultType": "matrix", "result": []}}))
    result = (await source.refresh({"job": "x"}))["up"]
    assert result.error is not None and "'matrix' is not supported" in result.error


async def test_bad_queries_are_reported_without_retry() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(400, json={"status": "error", "errorType": "bad_data",
                                         "error": "1:5: parse error: unexpected <by>"})

    source, sleeps = prom_source(handler)
    result = (await source.refresh({"job": "x"}))["up"]
    assert result.error == "HTTP 400, Prometheus bad_data: 1:5: parse error: unexpected <by>"
    assert calls == 1 and sleeps == []


async def test_server_errors_are_retried_with_doubling_backoff_then_reported() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503, json={"status": "error", "errorType": "unavailable", "error": "starting"})

    source, sleeps = prom_source(handler)
    result = (await source.refresh({"job": "x"}))["up"]
    assert calls == 3 and sleeps == [0.2, 0.4]
    assert result.error == "HTTP 503, Prometheus unavailable: starting (after 3 attempts)"


async def test_a_connection_error_is_retried_and_can_recover() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json=vector(({"pod": "a"}, "2")))

    source, sleeps = prom_source(handler)
    result = (await source.refresh({"job": "x"}))["up"]
    assert result.first() == 2.0 and sleeps == [0.2]


async def test_a_read_timeout_is_an_error_without_retry() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    source, sleeps = prom_source(handler, timeout=1.5)
    result = (await source.refresh({"job": "x"}))["up"]
    assert result.error == "Prometheus did not answer within 1.5s (ReadTimeout)" and sleeps == []


async def test_a_body_that_is_not_json_is_an_error() -> None:
    source, _ = prom_source(lambda r: httpx.Response(404, text="<html>not found</html>"), retries=0)
    result = (await source.refresh({"job": "x"}))["up"]
    assert result.error == "HTTP 404 from Prometheus with a body that is not a JSON object"


async def test_a_missing_parameter_is_an_error_result_for_that_query_only() -> None:
    source, _ = prom_source(lambda r: httpx.Response(200, json=vector(({}, "1"))), QueryList([UP, ONE]))
    results = await source.refresh({})
    assert results["up"].error == "query 'up': missing required parameter 'job'"
    assert results["one"].first() == 1.0


async def test_queries_of_one_refresh_run_concurrently() -> None:
    queries = prometheus_queries()
    arrived: list[str] = []
    all_in = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        arrived.append(sent_query(request))
        if len(arrived) == len(queries):
            all_in.set()
        # Each answer waits for every request to have arrived: only concurrent requests can finish.
        await asyncio.wait_for(all_in.wait(), timeout=5)
        return httpx.Response(200, json=vector(({"pod": "a"}, "0")))

    source, _ = prom_source(handler, queries)
    results = await source.refresh(query_params("m"))
    assert list(results) == queries.names() and all(r.ok for r in results.values())


async def test_only_successes_are_cached_and_get_serves_them_until_the_ttl() -> None:
    clock = FakeClock()
    answers = iter([httpx.Response(200, json=vector(({"pod": "a"}, "0.25"))),
                    httpx.Response(400, json={"status": "error", "errorType": "bad_data", "error": "nope"})])
    source, _ = prom_source(lambda r: next(answers), cache=TTLCache(ttl=30, clock=clock))
    assert source.get("up", {"job": "x"}) is None
    first = (await source.refresh({"job": "x", "unused": "1"}))["up"]
    assert source.get("up", {"job": "x"}) is first  # keyed by the query's own parameters
    assert source.get("up", {"job": "y"}) is None
    failed = (await source.refresh({"job": "x"}))["up"]
    assert not failed.ok
    assert source.get("up", {"job": "x"}) is first  # the error did not replace the last good value
    clock.now += 30
    assert source.get("up", {"job": "x"}) is None
    assert source.get("no-such-query", {}) is None


async def test_refresh_can_be_limited_to_named_queries() -> None:
    source, _ = prom_source(lambda r: httpx.Response(200, json=vector(({}, "1"))), QueryList([UP, ONE]))
    assert list(await source.refresh({}, queries=["one"])) == ["one"]
    with pytest.raises(KeyError, match="unknown query 'two'"):
        await source.refresh({}, queries=["two"])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        PrometheusSource("prom:9090", QueryList())
    with pytest.raises(ValueError, match="timeout"):
        PrometheusSource(PROM, QueryList(), timeout=0)


# --- PodScrapeSource -----------------------------------------------------------------------------------------------

PAGE_A = """\
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 3
vllm:num_requests_waiting{model_name="other"} 9
vllm:kv_cache_usage_perc{model_name="m"} NaN
vllm:num_requests_running{model_name="m",instance="inner"} 1
"""
PAGE_B = 'vllm:num_requests_waiting{model_name="m"} 0\nvllm:kv_cache_usage_perc{model_name="m"} 0.5\n'


@pytest.fixture
def pages() -> dict[str, httpx.Response | Exception]:
    return {"a:8000": httpx.Response(200, text=PAGE_A), "b:8000": httpx.Response(200, text=PAGE_B)}


def pod_source(pages: dict[str, httpx.Response | Exception], queries: QueryList | None = None,
               endpoints: list[str] | None = None) -> PodScrapeSource:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/metrics"
        answer = pages[request.url.netloc.decode()]
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return PodScrapeSource(endpoints or list(pages), queries or pod_queries(), client=client,
                           wall_clock=lambda: 77.0)


async def test_pod_scrape_reads_each_endpoint_with_its_instance_label(
        pages: dict[str, httpx.Response | Exception]) -> None:
    results = await pod_source(pages).refresh({"model": "m"})
    assert results[QUEUE_LENGTH].values == (
        MetricValue({"model_name": "m", "instance": "a:8000"}, 3.0, 77.0),
        MetricValue({"model_name": "m", "instance": "b:8000"}, 0.0, 77.0))
    kv = results[KV_CACHE_USAGE].by_replica()
    assert math.isnan(kv["a:8000"]) and kv["b:8000"] == 0.5
    running = results["running_requests"]
    assert running.values[0].labels == {"model_name": "m", "instance": "a:8000", "exported_instance": "inner"}
    assert running.by_replica() == {"a:8000": 1.0}  # absent on b: missing, not 0


async def test_pod_scrape_hostile_model_name_matches_nothing(pages: dict[str, httpx.Response | Exception]) -> None:
    results = await pod_source(pages).refresh({"model": 'm"} or vector(1) #'})
    assert all(r.ok and r.values == () for r in results.values())


async def test_pod_scrape_reports_failed_endpoints_as_warnings(pages: dict[str, httpx.Response | Exception]) -> None:
    pages["b:8000"] = httpx.ConnectError("refused")
    pages["c:8000"] = httpx.Response(500, text="oops")
    result = (await pod_source(pages).refresh({"model": "m"}))[QUEUE_LENGTH]
    assert result.by_replica() == {"a:8000": 3.0}
    assert result.warnings == ("b:8000: ConnectError: refused", "c:8000: HTTP 500")


async def test_pod_scrape_with_no_reachable_endpoint_is_an_error() -> None:
    pages: dict[str, httpx.Response | Exception] = {"a:8000": httpx.ConnectError("refused")}
    result = (await pod_source(pages).refresh({"model": "m"}))[QUEUE_LENGTH]
    assert result.error == "no endpoint could be scraped: a:8000: ConnectError: refused"


async def test_pod_scrape_refuses_promql_templates_with_a_reason(
        pages: dict[str, httpx.Response | Exception]) -> None:
    result = (await pod_source(pages, prometheus_queries()).refresh(query_params("m")))[KV_CACHE_USAGE]
    assert result.error is not None and "promql templates are not supported by the pod-scrape source" in result.error


async def test_pod_scrape_reads_the_pickers_flow_control_queue() -> None:
    page = ('inference_extension_flow_control_queue_size{fairness_id="a",priority="0",inference_pool="p",'
            'model_name="m",target_model_name="m"} 4\n'
            'inference_extension_flow_control_queue_size{fairness_id="b",priority="1",inference_pool="p",'
            'model_name="m",target_model_name="m"} 2\n'
            'inference_extension_flow_control_queue_size{fairness_id="a",priority="0",inference_pool="p",'
            'model_name="x",target_model_name="x"} 7\n')
    pages: dict[str, httpx.Response | Exception] = {"picker:9090": httpx.Response(200, text=page)}
    result = (await pod_source(pages, picker_pod_queries()).refresh({"model": "m"}))[FLOW_CONTROL_QUEUE_SIZE]
    assert sum(v.value for v in result.values) == 6.0


async def test_pod_scrape_reports_a_malformed_page_line_as_a_warning() -> None:
    pages: dict[str, httpx.Response | Exception] = {
        "a:8000": httpx.Response(200, text='vllm:num_requests_waiting{model_name="m"} three\n'),
        "b:8000": httpx.Response(200, text=PAGE_B)}
    result = (await pod_source(pages).refresh({"model": "m"}))[QUEUE_LENGTH]
    assert result.by_replica() == {"b:8000": 0.0}
    assert len(result.warnings) == 1 and result.warnings[0].startswith("a:8000: could not convert")


def test_pod_scrape_accepts_urls_and_refuses_other_endpoints() -> None:
    source = PodScrapeSource(["http://10.0.0.1:8000", "10.0.0.2:8001"], pod_queries())
    assert source.endpoints == ["10.0.0.1:8000", "10.0.0.2:8001"]
    with pytest.raises(ValueError, match="not host:port"):
        PodScrapeSource(["10.0.0.1:8000/metrics"], pod_queries())

