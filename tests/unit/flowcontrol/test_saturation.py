"""Saturation detectors: ``utilization-detector`` and ``concurrency-detector``, as detectors and as filters."""

from __future__ import annotations

import time
from typing import Any

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.errors import ConfigError
from epp.flowcontrol.saturation import ConcurrencyDetector, UtilizationDetector
from epp.flowcontrol.types import SaturationDetector
from epp.framework.attributes import INFLIGHT_LOAD_KEY
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.registry import Registry
from epp.framework.requestcontrol import ResponseInfo
from epp.framework.scheduling import CycleState, Filter
from epp.plugins.inflight.producer import InFlightLoadProducer

NOW = 1000.0


@pytest.fixture
def build(handle: Handle) -> Any:
    """``build(type, params)``: a detector built by a registry that knows it, on the shared handle."""
    registry = Registry()
    for cls in (UtilizationDetector, ConcurrencyDetector, InFlightLoadProducer):
        registry.register(cls)

    def make(type_name: str, params: dict[str, Any] | None = None) -> BasePlugin:
        plugin = registry.create(type_name, type_name, params, handle, "plugins[0]")
        handle.plugins[type_name] = plugin
        return plugin

    return make


def fresh(make_endpoint: Any, name: str, queue: int = 0, kv: float = 0.0, age: float = 0.0) -> Endpoint:
    endpoint: Endpoint = make_endpoint(name, waiting_queue_size=queue, kv_cache_usage_percent=kv,
                                       update_time=NOW - age)
    return endpoint


def test_both_detectors_implement_the_detector_and_filter_contracts(build: Any) -> None:
    for type_name in ("utilization-detector", "concurrency-detector"):
        plugin = build(type_name)
        assert isinstance(plugin, SaturationDetector)
        assert isinstance(plugin, Filter)


@pytest.mark.parametrize(
    ("queue", "kv", "expected"),
    [
        pytest.param(0, 0.0, 0.0, id="idle"),
        pytest.param(5, 0.0, 1.0, id="queue at its threshold"),
        pytest.param(2, 0.2, 0.4, id="queue dominates"),
        pytest.param(1, 0.6, 0.75, id="kv dominates"),
        pytest.param(10, 0.0, 2.0, id="beyond the threshold reads above 1"),
    ],
)
def test_utilization_of_one_fresh_endpoint_is_the_larger_ratio(build: Any, make_endpoint: Any, queue: int, kv: float,
                                                               expected: float) -> None:
    detector = build("utilization-detector")
    assert detector.saturation([fresh(make_endpoint, "a", queue, kv)], NOW) == pytest.approx(expected)


def test_stale_or_never_scraped_metrics_count_as_saturated(build: Any, make_endpoint: Any) -> None:
    detector = build("utilization-detector")
    stale = fresh(make_endpoint, "stale", queue=0, kv=0.0, age=0.201)
    just_fresh = fresh(make_endpoint, "fresh", queue=0, kv=0.0, age=0.199)
    never = make_endpoint("never")  # update_time 0.0
    assert detector.saturation([stale], NOW) == 1.0
    assert detector.saturation([just_fresh], NOW) == 0.0
    assert detector.saturation([never], NOW) == 1.0


def test_pool_utilization_is_the_average_and_an_empty_pool_is_saturated(build: Any, make_endpoint: Any) -> None:
    detector = build("utilization-detector")
    pool = [fresh(make_endpoint, "a", queue=5), fresh(make_endpoint, "b"), make_endpoint("c"),
            fresh(make_endpoint, "d", kv=0.4)]
    assert detector.saturation(pool, NOW) == pytest.approx((1.0 + 0.0 + 1.0 + 0.5) / 4)
    assert detector.saturation([], NOW) == 1.0


def test_utilization_thresholds_and_staleness_come_from_parameters(build: Any, make_endpoint: Any) -> None:
    detector = build("utilization-detector", {"queueDepthThreshold": 10, "kvCacheUtilThreshold": 0.5,
                                              "metricsStalenessThreshold": "2s"})
    assert detector.saturation([fresh(make_endpoint, "a", queue=5, kv=0.1, age=1.5)], NOW) == pytest.approx(0.5)
    assert detector.saturation([fresh(make_endpoint, "a", queue=1, kv=0.4, age=1.5)], NOW) == pytest.approx(0.8)


def test_utilization_counts_the_pickers_own_dispatches_since_the_scrape(build: Any, make_endpoint: Any) -> None:
    detector = build("utilization-detector")
    endpoint = fresh(make_endpoint, "a", queue=1)
    endpoint.add_dispatch(NOW, 0.0)
    assert detector.saturation([endpoint], NOW) == pytest.approx(2 / 5)


def test_utilization_filter_drops_full_and_stale_endpoints(build: Any, make_endpoint: Any, make_request: Any) -> None:
    detector = build("utilization-detector")
    now = time.monotonic()
    ok = make_endpoint("ok", waiting_queue_size=4, kv_cache_usage_percent=0.79, update_time=now)
    queue_full = make_endpoint("queue", waiting_queue_size=5, update_time=now)
    kv_full = make_endpoint("kv", kv_cache_usage_percent=0.8, update_time=now)
    stale = make_endpoint("stale", update_time=now - 60)
    kept = detector.filter(CycleState(), make_request(), [ok, queue_full, kv_full, stale])
    assert [e.name for e in kept] == ["ok"]


def test_utilization_filter_headroom_stretches_the_thresholds(build: Any, make_endpoint: Any,
                                                              make_request: Any) -> None:
    detector = build("utilization-detector", {"headroom": 0.5})
    now = time.monotonic()
    within = make_endpoint("within", waiting_queue_size=7, kv_cache_usage_percent=1.0, update_time=now)
    over = make_endpoint("over", waiting_queue_size=8, update_time=now)
    # kv 1.0 < 0.8 * 1.5 = 1.2 and queue 7 < 7.5; queue 8 >= 7.5
    assert [e.name for e in detector.filter(CycleState(), make_request(), [within, over])] == ["within"]


def test_utilization_filter_fails_open_when_every_endpoint_is_full(build: Any, make_endpoint: Any,
                                                                   make_request: Any) -> None:
    detector = build("utilization-detector")
    now = time.monotonic()
    endpoints = [make_endpoint("a", waiting_queue_size=9, update_time=now), make_endpoint("b")]
    kept = detector.filter(CycleState(), make_request(), endpoints)
    assert [e.name for e in kept] == ["a", "b"]
    assert kept is not endpoints  # the input list is not handed back for mutation


def test_utilization_debug_snapshot(build: Any, make_endpoint: Any) -> None:
    detector = build("utilization-detector")
    snapshot = detector.debug_snapshot([fresh(make_endpoint, "a", queue=1), make_endpoint("b")], NOW)
    assert snapshot["saturation"] == pytest.approx(0.6)
    assert snapshot["endpoints"]["a"] == {"score": pytest.approx(0.2), "stale": False, "waitingQueueSize": 1,
                                          "kvCacheUsagePercent": 0.0}
    assert snapshot["endpoints"]["b"]["stale"] is True
    assert snapshot["endpoints"]["b"]["score"] == 1.0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"queueDepthThreshold": 0}, "queueDepthThreshold"),
        ({"queueDepthThreshold": -1}, "queueDepthThreshold"),
        ({"kvCacheUtilThreshold": 0}, "kvCacheUtilThreshold"),
        ({"kvCacheUtilThreshold": float("inf")}, "kvCacheUtilThreshold"),
        ({"metricsStalenessThreshold": "fast"}, "metricsStalenessThreshold"),
        ({"metricsStalenessThreshold": "0"}, "metricsStalenessThreshold"),
        ({"headroom": -0.1}, "headroom"),
        ({"headroom": "lots"}, "headroom"),
        ({"queueDepth": 3}, "queueDepth"),
    ],
)
def test_utilization_parameter_errors_name_the_field(build: Any, params: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        build("utilization-detector", params)
    assert err.value.field == f"plugins[0].parameters.{field}"


# concurrency-detector, driven by a real inflight-load-producer


@pytest.fixture
def producer(build: Any) -> InFlightLoadProducer:
    plugin = build("inflight-load-producer")
    assert isinstance(plugin, InFlightLoadProducer)
    return plugin


def send(producer: InFlightLoadProducer, make_request: Any, routed: Any, endpoint: Endpoint, count: int,
         prompt: bytes = b"x" * 40) -> list[Any]:
    requests = [make_request(prompt, request_id=f"{endpoint.name}-{i}") for i in range(count)]
    for request in requests:
        producer.pre_request(CycleState(), request, routed(endpoint))
    return requests


def test_concurrency_detector_consumes_inflight_load_so_the_loader_creates_the_producer() -> None:
    assert INFLIGHT_LOAD_KEY in ConcurrencyDetector.CONSUMES


def test_concurrency_saturation_is_in_flight_over_pool_capacity(build: Any, producer: InFlightLoadProducer,
                                                                make_endpoint: Any, make_request: Any,
                                                                routed: Any) -> None:
    detector = build("concurrency-detector", {"maxConcurrency": 4})
    a, b = make_endpoint("a"), make_endpoint("b")
    assert detector.saturation([a, b], NOW) == 0.0
    sent = send(producer, make_request, routed, a, 3) + send(producer, make_request, routed, b, 1)
    assert detector.saturation([a, b], NOW) == pytest.approx(4 / 8)
    assert detector.saturation([a], NOW) == pytest.approx(3 / 4)
    for request in sent:
        producer.response_complete(request, ResponseInfo(endpoint=a, completed=True))
    assert detector.saturation([a, b], NOW) == 0.0
    assert detector.saturation([], NOW) == 1.0


def test_concurrency_tokens_mode_counts_estimated_tokens(build: Any, producer: InFlightLoadProducer,
                                                         make_endpoint: Any, make_request: Any, routed: Any) -> None:
    detector = build("concurrency-detector", {"concurrencyMode": "tokens", "maxTokenConcurrency": 100})
    a = make_endpoint("a")
    send(producer, make_request, routed, a, 2)  # 40 bytes: 10 input + 15 output tokens each
    assert detector.saturation([a], NOW) == pytest.approx(50 / 100)
    assert detector.debug_snapshot([a], NOW)["endpoints"] == {"a": {"inFlight": 50}}


def test_concurrency_filter_drops_endpoints_at_capacity_with_headroom(build: Any, producer: InFlightLoadProducer,
                                                                      make_endpoint: Any, make_request: Any,
                                                                      routed: Any) -> None:
    detector = build("concurrency-detector", {"maxConcurrency": 2, "headroom": 0.5})
    a, b, c = make_endpoint("a"), make_endpoint("b"), make_endpoint("c")
    send(producer, make_request, routed, a, 3)  # at 2 * 1.5 = 3: full
    send(producer, make_request, routed, b, 2)  # within the headroom
    kept = detector.filter(CycleState(), make_request(), [a, b, c])
    assert [e.name for e in kept] == ["b", "c"]


def test_concurrency_filter_fails_open_when_every_endpoint_is_full(build: Any, producer: InFlightLoadProducer,
                                                                   make_endpoint: Any, make_request: Any,
                                                                   routed: Any) -> None:
    detector = build("concurrency-detector", {"maxConcurrency": 1})
    a, b = make_endpoint("a"), make_endpoint("b")
    send(producer, make_request, routed, a, 1)
    send(producer, make_request, routed, b, 2)
    assert [e.name for e in detector.filter(CycleState(), make_request(), [a, b])] == ["a", "b"]


def test_concurrency_filter_reads_the_load_published_in_the_cycle(build: Any, producer: InFlightLoadProducer,
                                                                  make_endpoint: Any, make_request: Any,
                                                                  routed: Any) -> None:
    detector = build("concurrency-detector", {"maxConcurrency": 1})
    a, b = make_endpoint("a"), make_endpoint("b")
    send(producer, make_request, routed, a, 1)
    cycle = CycleState({INFLIGHT_LOAD_KEY: producer.load})
    assert [e.name for e in detector.filter(cycle, make_request(), [a, b])] == ["b"]


def test_concurrency_without_a_producer_reads_no_load(build: Any, make_endpoint: Any, make_request: Any,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    detector = build("concurrency-detector")
    a = make_endpoint("a")
    assert detector.saturation([a], NOW) == 0.0
    assert detector.saturation([a], NOW) == 0.0
    assert [r.message for r in caplog.records].count(
        "concurrency-detector/concurrency-detector: no inflight-load-producer among the plugins; "
        "in-flight counts read 0") == 1


def test_concurrency_finds_a_producer_built_after_it(build: Any, make_endpoint: Any, make_request: Any,
                                                     routed: Any) -> None:
    detector = build("concurrency-detector", {"maxConcurrency": 2})
    producer = build("inflight-load-producer")  # the loader auto-creates producers after configured plugins
    a = make_endpoint("a")
    send(producer, make_request, routed, a, 1)
    assert detector.saturation([a], NOW) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"concurrencyMode": "bytes"}, "concurrencyMode"),
        ({"maxConcurrency": 0}, "maxConcurrency"),
        ({"maxConcurrency": 1.5}, "maxConcurrency"),
        ({"maxTokenConcurrency": -1}, "maxTokenConcurrency"),
        ({"headroom": -1}, "headroom"),
        ({"maxInflight": 1}, "maxInflight"),
    ],
)
def test_concurrency_parameter_errors_name_the_field(build: Any, params: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        build("concurrency-detector", params)
    assert err.value.field == f"plugins[0].parameters.{field}"
