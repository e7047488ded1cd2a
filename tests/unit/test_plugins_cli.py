"""``epp plugins``: every registered type with its extension points and parameter defaults."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from epp.plugins import default_registry
from epp.plugins.cli import add_parser, describe_plugins


@pytest.fixture
def described() -> dict[str, dict[str, Any]]:
    return {entry["type"]: entry for entry in describe_plugins()}


def test_every_registered_type_is_listed_once_in_order() -> None:
    assert [entry["type"] for entry in describe_plugins()] == [spec.type_name for spec in default_registry()]


def test_every_type_has_a_summary_and_at_least_one_extension_point(described: dict[str, dict[str, Any]]) -> None:
    for type_name, entry in described.items():
        assert entry["summary"], type_name
        assert entry["extensionPoints"], type_name


@pytest.mark.parametrize(
    ("type_name", "points"),
    [
        pytest.param("queue-scorer", ["Scorer"], id="a scorer"),
        pytest.param("max-score-picker", ["Picker"], id="a picker"),
        pytest.param("single-profile-handler", ["ProfileHandler"], id="a profile handler"),
        pytest.param("prefix-cache-affinity-filter", ["Filter"], id="a filter"),
        pytest.param("approx-prefix-cache-producer", ["DataProducer", "PreRequest", "ResponseComplete"],
                     id="the prefix producer"),
        pytest.param("inflight-load-producer", ["DataProducer", "PreRequest", "ResponseStreaming", "ResponseComplete"],
                     id="the in-flight producer"),
        pytest.param("metrics-data-source", ["DataSource"], id="a data source"),
        pytest.param("core-metrics-extractor", ["Extractor"], id="an extractor"),
        pytest.param("openai-parser", ["Parser"], id="a parser"),
    ],
)
def test_extension_points(described: dict[str, dict[str, Any]], type_name: str, points: list[str]) -> None:
    assert described[type_name]["extensionPoints"] == points


@pytest.mark.parametrize(
    ("type_name", "parameters"),
    [
        pytest.param("queue-scorer", {}, id="no parameters"),
        pytest.param("max-score-picker", {"maxNumOfEndpoints": 1}, id="picker parameters"),
        pytest.param("approx-prefix-cache-producer", {"autoTune": True, "blockSizeTokens": 16,
                                                      "maxPrefixBlocksToMatch": 256, "maxPrefixTokensToMatch": 0,
                                                      "lruCapacityPerServer": 31250, "blockSize": 0},
                     id="prefix producer parameters with GIE defaults"),
        pytest.param("prefix-cache-affinity-filter", {"affinityThreshold": 0.8, "explorationProbability": 0.01,
                                                      "maxTTFTPenaltyMs": 5000.0}, id="explicit yaml keys"),
        pytest.param("token-load-scorer", {"queueThresholdTokens": 4194304}, id="token load threshold"),
        pytest.param("metrics-data-source", {"scheme": "http", "path": "/metrics", "insecureSkipVerify": True,
                                             "filterSeries": False},
                     id="metrics source parameters"),
        pytest.param("core-metrics-extractor", {"engineLabelKey": "inference.networking.k8s.io/engine-type",
                                                "defaultEngine": "vllm", "engineConfigs": []},
                     id="a list default is shown empty"),
    ],
)
def test_parameters_with_defaults(described: dict[str, dict[str, Any]], type_name: str,
                                  parameters: dict[str, Any]) -> None:
    assert {p["name"]: p["default"] for p in described[type_name]["parameters"]} == parameters


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_the_text_listing(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "queue-scorer  [Scorer]\n" in out
    assert "    - maxNumOfEndpoints (int, default 1)\n" in out


def test_the_json_listing_matches_describe_plugins(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["plugins", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(describe_plugins(), default=str))
