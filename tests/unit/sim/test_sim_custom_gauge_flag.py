"""``--custom-gauge NAME=VALUE``: parsed into the replica's config, bad names and values refused."""

from __future__ import annotations

import argparse

import pytest

from epp.sim.cli import add_parser, configs_from_args, run
from epp.sim.config import ConfigError, SimConfig


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="epp")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["sim", *argv])


def test_repeated_flags_give_every_replica_the_gauges() -> None:
    configs = configs_from_args(parse("--replicas", "2", "--port", "0", "--custom-gauge", "epp_test_backlog=3",
                                      "--custom-gauge", "vendor:queue_depth=-1.5"))
    assert [c.custom_gauges for c in configs] == [(("epp_test_backlog", 3.0), ("vendor:queue_depth", -1.5))] * 2


def test_no_flag_means_no_custom_gauges() -> None:
    (config,) = configs_from_args(parse())
    assert config.custom_gauges == ()


@pytest.mark.parametrize(
    "flag",
    ["backlog", "=3", "1backlog=3", "back-log=3", "backlog=high", "backlog=nan", "backlog=inf", "backlog="],
    ids=["no value", "no name", "leading digit", "dash in name", "not a number", "NaN", "infinite", "empty value"],
)
def test_bad_custom_gauges_are_config_errors(flag: str) -> None:
    with pytest.raises(ConfigError, match="custom_gauges"):
        configs_from_args(parse("--custom-gauge", flag))


def test_duplicate_gauge_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="unique"):
        configs_from_args(parse("--custom-gauge", "a=1", "--custom-gauge", "a=2"))


def test_config_built_directly_is_validated_too() -> None:
    with pytest.raises(ConfigError, match="finite"):
        SimConfig(custom_gauges=(("backlog", float("inf")),))


def test_a_gauge_named_like_a_page_metric_stops_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(parse("--port", "0", "--custom-gauge", "vllm:num_requests_waiting=1")) == 2
    assert "vllm:num_requests_waiting" in capsys.readouterr().err
