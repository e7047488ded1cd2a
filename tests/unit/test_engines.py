"""Engine metric specs: the ``series{label=value}`` syntax and the built-in engine table."""

from __future__ import annotations

import pytest

from epp.errors import ConfigError
from epp.plugins.datalayer.engines import BUILTIN_ENGINES, EngineConfig, MetricSpec, parse_spec


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        pytest.param("vllm:num_requests_waiting", MetricSpec("vllm:num_requests_waiting"), id="a bare series name"),
        pytest.param("m{request_type=waiting}", MetricSpec("m", (("request_type", "waiting"),)),
                     id="an unquoted label value"),
        pytest.param('m{request_type="waiting"}', MetricSpec("m", (("request_type", "waiting"),)),
                     id="a quoted label value"),
        pytest.param(" m { a = 1 , b=2 } ", MetricSpec("m", (("a", "1"), ("b", "2"))), id="spaces are ignored"),
        pytest.param("m{}", MetricSpec("m"), id="an empty label set"),
    ],
)
def test_parse_spec(text: str, spec: MetricSpec) -> None:
    assert parse_spec(text, "where") == spec


@pytest.mark.parametrize("text", [pytest.param("", id="empty"), pytest.param("   ", id="blank")])
def test_an_empty_spec_disables_the_field(text: str) -> None:
    assert parse_spec(text, "where") is None


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("9lives", id="a name starting with a digit"),
        pytest.param("m{a}", id="a label without a value"),
        pytest.param("m{=x}", id="a value without a label"),
        pytest.param("m{a=1", id="an unclosed label set"),
        pytest.param("two words", id="two names"),
    ],
)
def test_malformed_specs_are_config_errors_naming_the_field(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_spec(text, "engineConfigs[0].kvUsageSpec")
    assert err.value.field == "engineConfigs[0].kvUsageSpec"


def test_a_spec_renders_back_to_its_text() -> None:
    assert str(MetricSpec("m", (("a", "1"), ("b", "x")))) == "m{a=1,b=x}"
    assert str(MetricSpec("m")) == "m"


def test_the_builtin_engines_are_the_gie_table() -> None:
    table = {
        name: (e.queued_requests_spec, e.running_requests_spec, e.kv_usage_spec, e.lora_spec, e.cache_info_spec,
               e.cache_block_size_label_name, e.cache_num_blocks_label_name, e.cache_block_size_spec,
               e.cache_num_blocks_spec)
        for name, e in BUILTIN_ENGINES.items()
    }
    assert table == {
        "vllm": ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
                 "vllm:lora_requests_info", "vllm:cache_config_info", "block_size", "num_gpu_blocks", "", ""),
        "sglang": ("sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:token_usage", "",
                   "sglang:cache_config_info", "page_size", "num_pages", "", ""),
        "trtllm-serve": ("trtllm_num_requests_waiting", "trtllm_num_requests_running", "trtllm_kv_cache_utilization",
                         "", "", "", "", "trtllm_kv_cache_tokens_per_block", "trtllm_kv_cache_max_blocks"),
        "triton-tensorrt-llm": (
            "nv_trt_llm_request_metrics{request_type=waiting}", "nv_trt_llm_request_metrics{request_type=scheduled}",
            "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction}", "", "", "", "",
            "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=tokens_per}",
            "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=max}"),
    }


def test_an_engine_config_validates_its_specs_on_construction() -> None:
    with pytest.raises(ConfigError) as err:
        EngineConfig(name="x", running_requests_spec="m{oops}")
    assert err.value.field == "running_requests_spec"
    with pytest.raises(ConfigError) as err:
        EngineConfig(name="")
    assert err.value.field == "name"


def test_the_engine_name_default_is_reserved() -> None:
    with pytest.raises(ConfigError) as err:
        EngineConfig(name="default")
    assert err.value.field == "name"
    assert "reserved" in err.value.reason
