"""``prometheus-metric``: one series of the shared scrape → an endpoint's custom metrics."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from epp.config.loader import load_config
from epp.datalayer.collector import Collector, _State
from epp.datalayer.endpoint import CustomValue, Endpoint, EndpointMetadata
from epp.datalayer.pool import EndpointPool
from epp.datalayer.promtext import parse_series
from epp.errors import ConfigError
from epp.framework.params import decode_params
from epp.framework.plugin import Handle
from epp.plugins import default_registry
from epp.plugins.datalayer.core_metrics import CoreMetricsExtractor
from epp.plugins.datalayer.metrics_source import MetricsDataSource, ScrapedSeries
from epp.plugins.datalayer.prometheus_metric import (
    MissingMetricError,
    PrometheusMetricExtractor,
    PrometheusMetricParams,
)
from epp.plugins.scorers.metric import MetricScorer
from epp.testing.clock import TickingClock
from epp.testing.pages import MetricsPage

PAGE = """\
# HELP my_queue_depth Requests queued in the custom scheduler.
# TYPE my_queue_depth gauge
my_queue_depth{model_name="a",tier="gold"} 3
my_queue_depth{model_name="b",tier="gold"} 4
my_queue_depth{model_name="b",tier="bronze"} 10
my_queue_depth_total 99
other_metric 1
"""


def extractor(clock: Callable[[], float] | None = None, **raw: Any) -> PrometheusMetricExtractor:
    params = decode_params(PrometheusMetricParams, raw, "parameters")
    handle = Handle(pool=EndpointPool(), rng=random.Random(1))
    return PrometheusMetricExtractor("pm", params, handle, clock=clock or TickingClock())


def scraped(plugin: PrometheusMetricExtractor, ep: Endpoint, page: str = PAGE) -> ScrapedSeries:
    # What metrics-data-source hands its extractors: only the series they asked for.
    return ScrapedSeries(parse_series(page, plugin.wanted_series(ep)))


def test_the_custom_key_defaults_to_the_metric_name_and_holds_the_sum_with_its_update_time(
        make_endpoint: Callable[..., Endpoint]) -> None:
    ep = make_endpoint("a")
    plugin = extractor(metricName="my_queue_depth")
    plugin.extract(scraped(plugin, ep), ep)
    assert ep.custom == {"my_queue_depth": CustomValue(17.0, 100.0)}


def test_label_matchers_must_all_hold(make_endpoint: Callable[..., Endpoint]) -> None:
    ep = make_endpoint("a")
    plugin = extractor(metricName="my_queue_depth", labels={"model_name": "b", "tier": "gold"}, customKey="q")
    plugin.extract(scraped(plugin, ep), ep)
    assert ep.custom == {"q": CustomValue(4.0, 100.0)}


@pytest.mark.parametrize(("aggregate", "expected"), [("sum", 14.0), ("mean", 7.0), ("max", 10.0), ("min", 4.0)])
def test_several_matching_samples_combine_as_configured(
        make_endpoint: Callable[..., Endpoint], aggregate: str, expected: float) -> None:
    ep = make_endpoint("a")
    plugin = extractor(metricName="my_queue_depth", labels={"model_name": "b"}, aggregate=aggregate)
    plugin.extract(scraped(plugin, ep), ep)
    assert ep.custom["my_queue_depth"].value == expected


def test_only_the_named_series_is_asked_for_and_a_longer_name_does_not_match(
        make_endpoint: Callable[..., Endpoint]) -> None:
    ep = make_endpoint("a")
    plugin = extractor(metricName="my_queue_depth")
    assert plugin.wanted_series(ep) == frozenset({"my_queue_depth"})
    with pytest.raises(MissingMetricError):
        plugin.extract(ScrapedSeries(parse_series("my_queue_depth_total 5\n", plugin.wanted_series(ep))), ep)


def test_each_extraction_stamps_a_new_update_time(make_endpoint: Callable[..., Endpoint]) -> None:
    ep = make_endpoint("a")
    plugin = extractor(metricName="other_metric")
    plugin.extract(scraped(plugin, ep), ep)
    plugin.extract(scraped(plugin, ep, "other_metric 2\n"), ep)
    assert ep.custom["other_metric"] == CustomValue(2.0, 101.0)


def test_a_page_without_a_match_is_an_error_and_keeps_the_old_value_and_its_time(
        make_endpoint: Callable[..., Endpoint]) -> None:
    ep = make_endpoint("a")
    plugin = extractor(metricName="my_queue_depth", labels={"tier": "gold"})
    plugin.extract(scraped(plugin, ep), ep)
    with pytest.raises(MissingMetricError, match=r'no sample of my_queue_depth\{tier="gold"\} on the page'):
        plugin.extract(scraped(plugin, ep, 'my_queue_depth{tier="bronze"} 1\n'), ep)
    assert ep.custom == {"my_queue_depth": CustomValue(7.0, 100.0)}


def test_nan_and_infinite_samples_are_stored_as_they_are(make_endpoint: Callable[..., Endpoint]) -> None:
    # The scorer judges them (as the worst case); the extractor does not invent a number.
    ep = make_endpoint("a")
    plugin = extractor(metricName="g")
    plugin.extract(scraped(plugin, ep, "g +Inf\n"), ep)
    assert ep.custom["g"].value == float("inf")


@pytest.mark.parametrize(
    ("raw", "field", "reason_part"),
    [
        pytest.param({}, "parameters.metricName", "is required", id="no metric name"),
        pytest.param({"metricName": ""}, "parameters.metricName", "must not be empty", id="empty metric name"),
        pytest.param({"metricName": 'q{a="b"}'}, "parameters.metricName", "put label matchers under 'labels'",
                     id="matchers inside the name"),
        pytest.param({"metricName": "q", "labels": {"tier": 1}}, "parameters.labels", "value must be a string",
                     id="a label value that is not a string"),
        pytest.param({"metricName": "q", "labels": {"bad-name": "x"}}, "parameters.labels", "label names",
                     id="an invalid label name"),
        pytest.param({"metricName": "q", "labels": ["tier"]}, "parameters.labels", "expected a mapping",
                     id="labels not a mapping"),
        pytest.param({"metricName": "q", "aggregate": "median"}, "parameters.aggregate", "must be one of",
                     id="an unknown aggregate"),
    ],
)
def test_bad_parameters_name_their_field(raw: dict[str, Any], field: str, reason_part: str) -> None:
    with pytest.raises(ConfigError) as err:
        decode_params(PrometheusMetricParams, raw, "parameters")
    assert err.value.field == field
    assert reason_part in err.value.reason


CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: metrics-data-source
- type: core-metrics-extractor
- name: queue-depth
  type: prometheus-metric
  parameters: {metricName: my_queue_depth, labels: {tier: gold}}
- name: temperature
  type: prometheus-metric
  parameters: {metricName: gpu_temp, customKey: temp}
- name: by-queue-depth
  type: metric-scorer
  parameters: {metricName: my_queue_depth, staleAfter: 2s}
- type: max-score-picker
dataLayer:
  sources:
  - pluginRef: metrics-data-source
    extractors:
    - pluginRef: core-metrics-extractor
    - pluginRef: queue-depth
    - pluginRef: temperature
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: by-queue-depth
  - pluginRef: max-score-picker
"""


def test_a_config_wires_the_extractors_under_one_source_and_a_profile_scores_by_the_metric() -> None:
    pool = EndpointPool()
    config = load_config(CONFIG, default_registry(), Handle(pool=pool, rng=random.Random(1)))
    (binding,) = config.data_bindings
    assert isinstance(binding.source, MetricsDataSource)
    assert [type(e) for e in binding.extractors] == [CoreMetricsExtractor, PrometheusMetricExtractor,
                                                     PrometheusMetricExtractor]
    assert [e.key for e in binding.extractors[1:]] == ["my_queue_depth", "temp"]  # type: ignore[attr-defined]
    (ws,) = config.scheduler.profiles["default"].scorers  # type: ignore[attr-defined]
    assert isinstance(ws.scorer, MetricScorer)
    assert ws.scorer.params.stale_after == 2.0


# --- many extractors, one fetch ----------------------------------------------------------


class CountingPage(MetricsPage):
    """A /metrics page whose values are the number of GETs served so far."""

    def render(self) -> str:
        n = self.scrapes
        return (f'vllm:num_requests_waiting{{model_name="m"}} {n}\nvllm:num_requests_running{{model_name="m"}} 0\n'
                f'vllm:kv_cache_usage_perc{{model_name="m"}} 0.5\nmy_queue_depth{{tier="gold"}} {n}\n'
                f"gpu_temp {n}\n")


@pytest.fixture
async def counting_page() -> AsyncIterator[CountingPage]:
    async with CountingPage() as page:
        yield page


async def test_three_extractors_share_one_http_get_per_endpoint_per_tick(
        counting_page: CountingPage) -> None:
    port = counting_page.port
    pool = EndpointPool()
    config = load_config(CONFIG, default_registry(), Handle(pool=pool, rng=random.Random(1)))
    ep = Endpoint(EndpointMetadata("e", "127.0.0.1", port, port))
    collector = Collector(pool, config.data_bindings)
    state = _State()
    try:
        for tick in range(1, 4):
            await collector._tick(ep, state)
            # One GET per tick, and every extractor read that same page (its values are the GET count).
            assert counting_page.scrapes == tick
            assert ep.metrics.waiting_queue_size == tick
            assert ep.custom["my_queue_depth"].value == tick
            assert ep.custom["temp"].value == tick
        assert state.extract_errors == {}
    finally:
        await config.data_bindings[0].source.aclose()
