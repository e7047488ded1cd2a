"""The step-time model and the configuration's validation."""

from __future__ import annotations

import pytest

from epp.sim.config import ConfigError, LoraModule, SimConfig
from epp.sim.cost import CostModel, StepWork


def test_step_time_grows_with_prefill_tokens_batch_size_and_context() -> None:
    cost = CostModel(SimConfig())
    empty = cost.simulated(StepWork())
    assert empty == pytest.approx(SimConfig().step_base)
    prefill_1000 = cost.simulated(StepWork(prefill_tokens=1000))
    prefill_100 = cost.simulated(StepWork(prefill_tokens=100))
    assert prefill_1000 > prefill_100 > empty
    decode_64 = cost.simulated(StepWork(decode_seqs=64, decode_context=64_000))
    decode_8 = cost.simulated(StepWork(decode_seqs=8, decode_context=8_000))
    assert decode_64 > decode_8 > empty


def test_defaults_are_in_the_range_of_an_8b_model_on_one_h100() -> None:
    cost = CostModel(SimConfig())
    ttft_2k = cost.simulated(StepWork(prefill_tokens=2048, attn_pairs=2048 * 1024))
    itl_bs1 = cost.simulated(StepWork(decode_seqs=1, decode_context=2048))
    itl_bs128 = cost.simulated(StepWork(decode_seqs=128, decode_context=128 * 2048))
    assert 0.05 < ttft_2k < 0.2
    assert 0.005 < itl_bs1 < 0.01
    assert 0.015 < itl_bs128 < 0.04


def test_speed_and_time_scale_multiply_wall_time() -> None:
    work = StepWork(prefill_tokens=500)
    base = CostModel(SimConfig()).wall(work)
    assert CostModel(SimConfig(speed=2.0)).wall(work) == pytest.approx(2 * base)
    assert CostModel(SimConfig(time_scale=0.1)).wall(work) == pytest.approx(0.1 * base)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"time_scale": 0}, "time_scale"),
        ({"speed": -1.0}, "speed"),
        ({"fail_rate": 1.5}, "fail_rate"),
        ({"num_gpu_blocks": 10, "block_size": 16}, "max_model_len"),
        ({"lora_modules": (LoraModule("a", "x"), LoraModule("a", "y"))}, "lora_modules"),
        ({"lora_modules": (LoraModule("m", "x"),), "model": "m"}, "lora_modules"),
        ({"port": 70000}, "port"),
    ],
    ids=["no sequences", "zero time scale", "negative speed", "fail rate above one",
         "max_model_len larger than the KV cache", "duplicate adapters", "adapter named like the model",
         "port out of range"],
)
def test_impossible_configs_are_rejected_naming_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        SimConfig(**changes)  # type: ignore[arg-type]
    assert info.value.field == field


def test_served_names_default_to_the_model_and_lora_modules_parse() -> None:
    assert SimConfig(model="m").served_names == ("m",)
    config = SimConfig(model="m", served_model_name=("a", "b"))
    assert config.model_name == "a" and config.served_names == ("a", "b")
    assert LoraModule.parse("sql=/adapters/sql") == LoraModule("sql", "/adapters/sql")
    assert LoraModule.parse("sql") == LoraModule("sql", "sql")
    assert LoraModule.parse('{"name": "sql", "path": "/p", "base_model_name": "m"}') == LoraModule("sql", "/p")
    with pytest.raises(ConfigError):
        LoraModule.parse('{"path": "/p"}')
