"""``core-metrics-extractor``: scraped series → an endpoint's ``Metrics``, per engine."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from epp.datalayer.endpoint import ENGINE_LABEL, Endpoint, Metrics
from epp.datalayer.promtext import parse_series
from epp.errors import ConfigError
from epp.framework.params import decode_params
from epp.plugins.datalayer.core_metrics import CoreMetricsExtractor, CoreMetricsParams, ExtractionError
from epp.plugins.datalayer.metrics_source import ScrapedSeries
from epp.testing.clock import TickingClock

VLLM = """\
vllm:num_requests_waiting{engine="0"} 3
vllm:num_requests_waiting{engine="1"} 4
vllm:num_requests_running{engine="0"} 1
vllm:num_requests_running{engine="1"} 2
vllm:kv_cache_usage_perc{engine="0"} 0.25
vllm:kv_cache_usage_perc{engine="1"} 0.75
vllm:cache_config_info{block_size="16",num_gpu_blocks="27464"} 1
"""

SGLANG = """\
sglang:num_queue_reqs{model_name="m"} 7
sglang:num_running_reqs{model_name="m"} 6
sglang:token_usage{model_name="m"} 0.5
sglang:cache_config_info{page_size="32",num_pages="1000"} 1
"""

TRTLLM_SERVE = """\
trtllm_num_requests_waiting 2
trtllm_num_requests_running 9
trtllm_kv_cache_utilization 0.125
trtllm_kv_cache_tokens_per_block 64
trtllm_kv_cache_max_blocks 2048
"""

TRITON = """\
nv_trt_llm_request_metrics{model="ensemble",request_type="waiting"} 5
nv_trt_llm_request_metrics{model="ensemble",request_type="scheduled"} 8
nv_trt_llm_request_metrics{model="ensemble",request_type="context"} 99
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"} 0.375
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per"} 128
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max"} 512
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used"} 11
"""

@pytest.fixture
def make_extractor(handle: Any) -> Callable[..., CoreMetricsExtractor]:
    def build(params: dict[str, Any] | None = None) -> CoreMetricsExtractor:
        # Built as the registry builds it (decode, then construct), plus a deterministic clock.
        decoded = decode_params(CoreMetricsParams, params, "plugins[0].parameters")
        return CoreMetricsExtractor("core-metrics-extractor", decoded, handle, clock=TickingClock())

    return build


def scrape(extractor: CoreMetricsExtractor, page: str, endpoint: Endpoint) -> ScrapedSeries:
    """What ``metrics-data-source`` hands the extractor: the page parsed for the series it wants."""
    return ScrapedSeries(parse_series(page, extractor.wanted_series(endpoint)))


@pytest.mark.parametrize(
    ("engine", "page", "expected"),
    [
        pytest.param("vllm", VLLM, Metrics(waiting_queue_size=7, running_requests_size=3, kv_cache_usage_percent=0.5,
                                           cache_block_size=16, cache_num_blocks=27464, update_time=100.0),
                     id="vllm sums queue and running over engines and averages KV usage"),
        pytest.param("sglang", SGLANG, Metrics(waiting_queue_size=7, running_requests_size=6,
                                               kv_cache_usage_percent=0.5, cache_block_size=32, cache_num_blocks=1000,
                                               update_time=100.0),
                     id="sglang reads page_size and num_pages labels"),
        pytest.param("trtllm-serve", TRTLLM_SERVE, Metrics(waiting_queue_size=2, running_requests_size=9,
                                                           kv_cache_usage_percent=0.125, cache_block_size=64,
                                                           cache_num_blocks=2048, update_time=100.0),
                     id="trtllm-serve reads cache sizes from gauges"),
        pytest.param("triton-tensorrt-llm", TRITON, Metrics(waiting_queue_size=5, running_requests_size=8,
                                                            kv_cache_usage_percent=0.375, cache_block_size=128,
                                                            cache_num_blocks=512, update_time=100.0),
                     id="triton selects series by label value"),
    ],
)
def test_each_builtin_engine_maps_its_series(
    make_extractor: Any, make_endpoint: Any, engine: str, page: str, expected: Metrics
) -> None:
    extractor = make_extractor()
    ep = make_endpoint("e", labels={ENGINE_LABEL: engine})
    extractor.extract(scrape(extractor, page, ep), ep)
    assert ep.metrics == expected


@pytest.mark.parametrize(
    ("labels", "params", "engine"),
    [
        pytest.param({}, None, "vllm", id="no engine label uses the default engine vllm"),
        pytest.param({ENGINE_LABEL: "sglang"}, None, "sglang", id="the engine label chooses the engine"),
        pytest.param({ENGINE_LABEL: "tgi"}, None, "vllm", id="an unknown engine label falls back to the default"),
        pytest.param({ENGINE_LABEL: ""}, None, "vllm", id="an empty engine label falls back to the default"),
        pytest.param({}, {"defaultEngine": "sglang"}, "sglang", id="defaultEngine changes the fallback"),
        pytest.param({"engine": "sglang"}, {"engineLabelKey": "engine"}, "sglang",
                     id="engineLabelKey names the label to read"),
        pytest.param({ENGINE_LABEL: "sglang"}, {"engineLabelKey": "engine"}, "vllm",
                     id="with another engineLabelKey the standard label is ignored"),
    ],
)
def test_the_engine_is_chosen_by_endpoint_label(
    make_extractor: Any, make_endpoint: Any, labels: dict[str, str], params: dict[str, Any] | None, engine: str
) -> None:
    extractor = make_extractor(params)
    assert extractor.engine_for(make_endpoint("e", labels=labels)).name == engine


def test_a_user_engine_config_replaces_the_builtin_of_that_name_entirely(
    make_extractor: Any, make_endpoint: Any
) -> None:
    extractor = make_extractor({"engineConfigs": [
        {"name": "vllm", "queuedRequestsSpec": "my_queue", "runningRequestsSpec": "my_running"}]})
    ep = make_endpoint("e")
    extractor.extract(scrape(extractor, VLLM + "my_queue 11\nmy_running 12\n", ep), ep)
    # KV, LoRA and cache-info specs were not given, so they are disabled rather than missing.
    assert ep.metrics == Metrics(waiting_queue_size=11, running_requests_size=12, update_time=100.0)
    assert extractor.wanted_series(ep) == {"my_queue", "my_running"}


def test_a_user_engine_config_adds_a_new_engine(make_extractor: Any, make_endpoint: Any) -> None:
    extractor = make_extractor({"engineConfigs": [
        {"name": "tgi", "queuedRequestsSpec": "tgi_queue_size", "runningRequestsSpec": "tgi_batch_current_size",
         "kvUsageSpec": "tgi_kv_usage{kind=\"total\"}", "cacheBlockSizeSpec": "tgi_block_size"}],
        "defaultEngine": "tgi"})
    ep = make_endpoint("e")
    page = 'tgi_queue_size 1\ntgi_batch_current_size 2\ntgi_kv_usage{kind="total"} 0.5\ntgi_block_size 8\n'
    extractor.extract(scrape(extractor, page, ep), ep)
    assert ep.metrics == Metrics(waiting_queue_size=1, running_requests_size=2, kv_cache_usage_percent=0.5,
                                 cache_block_size=8, update_time=100.0)
    assert extractor.engine_for(make_endpoint("v", labels={ENGINE_LABEL: "vllm"})).name == "vllm"


def test_a_partial_update_keeps_old_values_and_lists_the_missing_series(
    make_extractor: Any, make_endpoint: Any
) -> None:
    extractor = make_extractor()
    ep = make_endpoint("e", waiting_queue_size=7, running_requests_size=8, kv_cache_usage_percent=0.5,
                       update_time=1.0)
    with pytest.raises(ExtractionError) as err:
        extractor.extract(scrape(extractor, "vllm:num_requests_running 5\n", ep), ep)
    assert str(err.value) == ("engine vllm: series missing or malformed: "
                              "vllm:num_requests_waiting, vllm:kv_cache_usage_perc")
    assert ep.metrics == Metrics(waiting_queue_size=7, running_requests_size=5, kv_cache_usage_percent=0.5,
                                 update_time=100.0)


def test_nothing_found_raises_and_leaves_metrics_and_update_time_alone(
    make_extractor: Any, make_endpoint: Any
) -> None:
    extractor = make_extractor()
    before = Metrics(waiting_queue_size=2, update_time=1.0)
    ep = make_endpoint("e", waiting_queue_size=2, update_time=1.0)
    with pytest.raises(ExtractionError):
        extractor.extract(ScrapedSeries(), ep)
    assert ep.metrics == before


def test_missing_lora_and_cache_info_is_not_an_error(make_extractor: Any, make_endpoint: Any) -> None:
    extractor = make_extractor()
    ep = make_endpoint("e", active_models=frozenset({"old"}), cache_block_size=16)
    page = "vllm:num_requests_waiting 1\nvllm:num_requests_running 2\nvllm:kv_cache_usage_perc 0.1\n"
    extractor.extract(scrape(extractor, page, ep), ep)
    assert ep.metrics == Metrics(waiting_queue_size=1, running_requests_size=2, kv_cache_usage_percent=0.1,
                                 active_models=frozenset({"old"}), cache_block_size=16, update_time=100.0)


def test_triton_series_with_another_label_value_are_not_read(make_extractor: Any, make_endpoint: Any) -> None:
    extractor = make_extractor()
    ep = make_endpoint("e", labels={ENGINE_LABEL: "triton-tensorrt-llm"})
    page = 'nv_trt_llm_request_metrics{request_type="context"} 9\n' \
           'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used"} 3\n'
    with pytest.raises(ExtractionError) as err:
        extractor.extract(scrape(extractor, page, ep), ep)
    assert "nv_trt_llm_request_metrics{request_type=waiting}" in str(err.value)
    assert ep.metrics == Metrics()


LORA_OLD = 'vllm:lora_requests_info{max_lora="4",running_lora_adapters="a, b",waiting_lora_adapters="c"} 1700000000\n'
LORA_NEW = 'vllm:lora_requests_info{max_lora="2",running_lora_adapters="x",waiting_lora_adapters=""} 1700000050\n'


@pytest.mark.parametrize(
    ("page", "active", "waiting", "max_lora"),
    [
        pytest.param(LORA_OLD, {"a", "b"}, {"c"}, 4, id="CSV adapter lists are split and trimmed"),
        pytest.param(LORA_OLD + LORA_NEW, {"x"}, set(), 2, id="the newest series wins (its value is a timestamp)"),
        pytest.param(LORA_NEW + LORA_OLD, {"x"}, set(), 2, id="the newest series wins whatever the order"),
        pytest.param('vllm:lora_requests_info{max_lora="1",running_lora_adapters=",a,,",'
                     'waiting_lora_adapters=" "} 1\n', {"a"}, set(), 1, id="empty CSV entries are skipped"),
    ],
)
def test_lora_info(
    make_extractor: Any, make_endpoint: Any, page: str, active: set[str], waiting: set[str], max_lora: int
) -> None:
    extractor = make_extractor()
    ep = make_endpoint("e")
    with pytest.raises(ExtractionError):  # queue/running/KV are absent from these pages
        extractor.extract(scrape(extractor, page, ep), ep)
    m = ep.metrics
    assert (m.active_models, m.waiting_models, m.max_active_models) == (active, waiting, max_lora)
    assert m.update_time == 100.0


@pytest.mark.parametrize(
    "max_lora",
    [pytest.param("", id="an empty max_lora label"), pytest.param("many", id="a max_lora label that is not a number")],
)
def test_a_malformed_max_lora_label_does_not_lose_the_other_fields(
    make_extractor: Any, make_endpoint: Any, max_lora: str
) -> None:
    extractor = make_extractor()
    ep = make_endpoint("e", max_active_models=3)
    page = ("vllm:num_requests_waiting 1\nvllm:num_requests_running 2\nvllm:kv_cache_usage_perc 0.25\n"
            f'vllm:lora_requests_info{{max_lora="{max_lora}",running_lora_adapters="a",waiting_lora_adapters=""}} 5\n')
    with contextlib.suppress(ExtractionError):  # reporting the bad label is fine; losing the scrape is not
        extractor.extract(scrape(extractor, page, ep), ep)
    assert ep.metrics == Metrics(waiting_queue_size=1, running_requests_size=2, kv_cache_usage_percent=0.25,
                                 active_models=frozenset({"a"}), max_active_models=3, update_time=100.0)


def test_update_time_is_set_only_when_something_updated(make_extractor: Any, make_endpoint: Any) -> None:
    extractor = make_extractor()
    ep = make_endpoint("e")
    extractor.extract(scrape(extractor, VLLM, ep), ep)
    assert ep.metrics.update_time == 100.0
    with pytest.raises(ExtractionError):
        extractor.extract(scrape(extractor, "unrelated 1\n", ep), ep)
    assert ep.metrics.update_time == 100.0
    extractor.extract(scrape(extractor, VLLM, ep), ep)
    assert ep.metrics.update_time == 101.0


def test_extract_swaps_in_a_new_metrics_object(make_extractor: Any, make_endpoint: Any) -> None:
    extractor = make_extractor()
    ep: Endpoint = make_endpoint("e")
    before = ep.metrics
    extractor.extract(scrape(extractor, VLLM, ep), ep)
    assert ep.metrics is not before and before == Metrics()


@pytest.mark.parametrize(
    ("engine", "series"),
    [
        pytest.param("vllm", {"vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
                              "vllm:lora_requests_info", "vllm:cache_config_info", "vllm:prefix_cache_hits_total",
                              "vllm:prefix_cache_queries_total", "process_start_time_seconds"}, id="vllm"),
        pytest.param("sglang", {"sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:token_usage",
                                "sglang:cache_config_info"}, id="sglang"),
        pytest.param("trtllm-serve", {"trtllm_num_requests_waiting", "trtllm_num_requests_running",
                                      "trtllm_kv_cache_utilization", "trtllm_kv_cache_tokens_per_block",
                                      "trtllm_kv_cache_max_blocks"}, id="trtllm-serve"),
        pytest.param("triton-tensorrt-llm", {"nv_trt_llm_request_metrics", "nv_trt_llm_kv_cache_block_metrics"},
                     id="triton-tensorrt-llm"),
    ],
)
def test_an_endpoint_wants_only_its_engine_series(make_extractor: Any, make_endpoint: Any, engine: str,
                                                  series: set[str]) -> None:
    assert make_extractor().wanted_series(make_endpoint("e", labels={ENGINE_LABEL: engine})) == series


@pytest.mark.parametrize(
    ("params", "field", "reason_part"),
    [
        pytest.param({"defaultEngine": "tgi"}, "plugins[0].parameters.defaultEngine", "unknown engine",
                     id="a default engine nobody defines"),
        pytest.param({"engineConfigs": [{"name": "a"}, {"name": "a"}]}, "plugins[0].parameters.engineConfigs",
                     "unique", id="two engine configs with one name"),
        pytest.param({"engineConfigs": [{"name": ""}]}, "plugins[0].parameters.engineConfigs[0].name",
                     "must not be empty", id="an engine config without a name"),
        pytest.param({"engineConfigs": [{"queuedRequestsSpec": "q"}]}, "plugins[0].parameters.engineConfigs[0].name",
                     "required", id="an engine config missing its name key"),
        pytest.param({"engineConfigs": [{"name": "x", "kvUsageSpec": "bad spec!"}]},
                     "plugins[0].parameters.engineConfigs[0].kvUsageSpec", "metric spec",
                     id="a malformed metric spec"),
        pytest.param({"engineConfigs": [{"name": "x", "queuedSpec": "q"}]},
                     "plugins[0].parameters.engineConfigs[0].queuedSpec", "unknown parameter",
                     id="a misspelt engine config key"),
    ],
)
def test_invalid_parameters_name_the_field(create: Any, params: dict[str, Any], field: str, reason_part: str) -> None:
    with pytest.raises(ConfigError) as err:
        create("core-metrics-extractor", params)
    assert err.value.field == field
    assert reason_part in err.value.reason


def test_built_through_the_registry_it_reads_scraped_series(create: Any) -> None:
    extractor = create("core-metrics-extractor")
    assert isinstance(extractor, CoreMetricsExtractor)
    assert extractor.input_type() is ScrapedSeries


def test_a_nan_or_infinite_series_counts_as_missing_and_the_others_still_apply(
    make_extractor: Any, make_endpoint: Any
) -> None:
    extractor = make_extractor()
    ep = make_endpoint("e", waiting_queue_size=7, running_requests_size=8, kv_cache_usage_percent=0.5,
                       update_time=1.0)
    page = ('vllm:num_requests_running 5\nvllm:num_requests_waiting NaN\nvllm:kv_cache_usage_perc +Inf\n'
            'vllm:cache_config_info{block_size="16",num_gpu_blocks="+Inf"} 1\n')
    with pytest.raises(ExtractionError) as err:
        extractor.extract(scrape(extractor, page, ep), ep)
    assert str(err.value) == ("engine vllm: series missing or malformed: "
                              "vllm:num_requests_waiting, vllm:kv_cache_usage_perc")
    assert ep.metrics == Metrics(waiting_queue_size=7, running_requests_size=5, kv_cache_usage_percent=0.5,
                                 cache_block_size=16, update_time=100.0)


def test_a_user_engine_can_name_its_prefix_cache_counters_and_start_time(make_extractor: Any,
                                                                          make_endpoint: Any) -> None:
    extractor = make_extractor({"engineConfigs": [{
        "name": "custom", "queuedRequestsSpec": "q", "runningRequestsSpec": "r", "kvUsageSpec": "kv",
        "prefixCacheHitsSpec": "hits_total", "prefixCacheQueriesSpec": "lookups_total",
        "processStartTimeSpec": "started"}]})
    ep = make_endpoint("e", labels={ENGINE_LABEL: "custom"})
    for hits, lookups in ((10, 100), (40, 200)):
        page = f"q 0\nr 0\nkv 0\nhits_total {hits}\nlookups_total {lookups}\nstarted 1700000000.5\n"
        extractor.extract(scrape(extractor, page, ep), ep)
    m = ep.metrics
    assert (m.prefix_cache_hits, m.prefix_cache_queries, m.process_start_time) == (40, 200, 1700000000.5)
    assert m.prefix_cache_hit_rate == pytest.approx(0.3)
