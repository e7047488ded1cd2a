"""The ``epp sim`` flags: vLLM names, defaults equal to SimConfig's, one config per replica."""

from __future__ import annotations

import argparse

import pytest

from epp.sim.cli import add_parser, configs_from_args
from epp.sim.config import ConfigError, EngineKind, LoraModule, SimConfig


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="epp")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["sim", *argv])


def test_defaults_equal_simconfig_defaults() -> None:
    args = parse()
    assert callable(args.func)
    (config,) = configs_from_args(args)
    assert config == SimConfig()


def test_vllm_flag_names_are_accepted() -> None:
    args = parse("--model", "m", "--served-model-name", "a", "b", "--max-num-seqs", "4",
                 "--max-num-batched-tokens", "512", "--max-model-len", "1024", "--block-size", "32",
                 "--num-gpu-blocks-override", "100", "--no-enable-prefix-caching",
                 "--lora-modules", "x=/p", "y",
                 "--max-loras", "2", "--seed", "5", "--stream-interval", "3", "--engine", "sglang")
    (config,) = configs_from_args(args)
    assert config.served_names == ("a", "b") and config.max_num_seqs == 4 and config.num_gpu_blocks == 100
    assert config.block_size == 32 and not config.enable_prefix_caching and config.engine is EngineKind.SGLANG
    assert config.lora_modules == (LoraModule("x", "/p"), LoraModule("y", "y"))
    assert (config.max_loras, config.seed, config.stream_interval) == (2, 5, 3)


def test_replicas_get_consecutive_ports_and_their_own_speed() -> None:
    configs = configs_from_args(parse("--replicas", "3", "--base-port", "9001", "--speed", "1,1,2",
                                      "--time-scale", "0.1"))
    assert [c.port for c in configs] == [9001, 9002, 9003]
    assert [c.speed for c in configs] == [1.0, 1.0, 2.0]
    assert [c.replica_index for c in configs] == [0, 1, 2]
    assert all(c.time_scale == 0.1 for c in configs)


def test_port_zero_gives_every_replica_an_ephemeral_port() -> None:
    assert [c.port for c in configs_from_args(parse("--replicas", "2", "--port", "0"))] == [0, 0]


@pytest.mark.parametrize(
    "argv",
    [("--replicas", "2", "--speed", "1,2,3"), ("--replicas", "0"), ("--max-num-seqs", "0")],
    ids=["speed list of the wrong length", "no replicas", "impossible engine limit"],
)
def test_impossible_flags_are_config_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        configs_from_args(parse(*argv))


def test_malformed_speed_is_an_argparse_error() -> None:
    with pytest.raises(SystemExit):
        parse("--speed", "fast")
