"""The plugin registry: a value mapping config types to plugin classes."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.datalayer.pool import EndpointPool
from epp.errors import ConfigError
from epp.framework.plugin import BasePlugin, Handle, TypedName
from epp.framework.registry import ParamDoc, Registry
from epp.framework.scheduling import CycleState, ScorerCategory
from epp.plugins import default_registry
from epp.plugins.scorers.queue import QueueScorer
from epp.requests.types import InferenceRequest

IN_TREE_TYPES = [
    "approx-prefix-cache-producer", "concurrency-detector", "core-metrics-extractor",
    "destination-endpoint-served-verifier", "edf-ordering-policy", "fcfs-ordering-policy",
    "global-strict-fairness-policy", "header-based-testing-filter", "inflight-load-producer", "json-file-source",
    "json-metric", "kv-cache-utilization-scorer", "latency-scorer", "latency-slo-admitter", "load-imbalance-filter",
    "lora-affinity-scorer", "max-score-picker", "metric-scorer", "metrics-data-source", "openai-parser",
    "precise-prefix-cache-scorer", "predicted-latency-producer", "prefill-load-scorer", "prefix-cache-affinity-filter",
    "prefix-cache-scorer",
    "priority-holdback-policy",
    "prometheus-metric", "queue-scorer", "random-picker", "round-robin-fairness-policy",
    "running-requests-size-scorer", "single-profile-handler", "slo-aware-profile-handler",
    "slo-deadline-ordering-policy", "slo-headroom-tier-filter", "slo-request-tracker", "static-usage-limit-policy",
    "token-load-scorer", "utilization-detector", "weighted-random-picker", "workload-aware-ordering-policy",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConstantParams:
    value: float
    tags: list[str] = field(default_factory=lambda: ["x"])
    scale_factor: float = 1.0


class ConstantScorer(BasePlugin):
    """Scores every endpoint the same.

    Second line that is not the summary.
    """

    TYPE = "constant-scorer"
    PARAMS = ConstantParams

    def category(self) -> ScorerCategory:
        return ScorerCategory.BALANCE

    def score(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> list[float]:
        return [self.params.value] * len(endpoints)


class NotAPlugin(BasePlugin):
    """Implements no extension point."""

    TYPE = "nothing"


def handle() -> Handle:
    return Handle(pool=EndpointPool(), rng=random.Random(1))


def test_the_default_registry_holds_every_in_tree_type() -> None:
    assert [spec.type_name for spec in default_registry()] == IN_TREE_TYPES


def test_each_default_registry_is_an_independent_value() -> None:
    one, two = default_registry(), default_registry()
    one.register(ConstantScorer)
    assert "constant-scorer" in one and "constant-scorer" not in two


def test_default_producers_are_registered_for_the_keys_plugins_consume() -> None:
    registry = default_registry()
    assert registry.default_producer("PrefixCacheMatchInfoKey") == "approx-prefix-cache-producer"
    assert registry.default_producer("InFlightLoadKey") == "inflight-load-producer"
    assert registry.default_producer("LatencyPredictionInfoKey") == "predicted-latency-producer"
    assert registry.default_producer("Nothing") is None


def test_registering_a_type_twice_is_an_error() -> None:
    registry = Registry()
    registry.register(QueueScorer)
    with pytest.raises(ValueError, match="'queue-scorer' is already registered"):
        registry.register(QueueScorer)


def test_a_class_implementing_no_extension_point_is_refused() -> None:
    with pytest.raises(TypeError, match="NotAPlugin implements no extension point"):
        Registry().register(NotAPlugin)


def test_a_default_producer_must_produce_its_key() -> None:
    with pytest.raises(ValueError, match="does not produce 'SomeKey'"):
        Registry().register(QueueScorer, default_producer_for=("SomeKey",))


def test_an_unknown_type_is_an_error_listing_registered_types() -> None:
    registry = Registry()
    registry.register(QueueScorer)
    registry.register(ConstantScorer)
    with pytest.raises(ConfigError) as err:
        registry.create("queue-scorrer", "q", None, handle(), "plugins[3]")
    assert err.value.field == "plugins[3].type"
    assert err.value.reason == "unknown plugin type 'queue-scorrer' (registered: constant-scorer, queue-scorer)"


@pytest.mark.parametrize(
    "params",
    [pytest.param(None, id="no parameters"), pytest.param({}, id="an empty mapping")],
)
def test_a_plugin_without_parameters_accepts_none_or_empty(params: Any) -> None:
    plugin = default_registry().create("queue-scorer", "my-queue", params, handle(), "plugins[0]")
    assert plugin.typed_name == TypedName("queue-scorer", "my-queue")
    assert str(plugin.typed_name) == "my-queue/queue-scorer"
    assert plugin.params is None


def test_parameters_for_a_plugin_that_takes_none_are_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        default_registry().create("queue-scorer", "q", {"weight": 2}, handle(), "plugins[1]")
    assert err.value.field == "plugins[1].parameters"
    assert err.value.reason == "queue-scorer takes no parameters"


def test_create_decodes_parameters_and_reports_their_path() -> None:
    registry = Registry()
    registry.register(ConstantScorer)
    plugin = registry.create("constant-scorer", "c", {"value": 0.5, "scaleFactor": 2}, handle(), "plugins[0]")
    assert plugin.params == ConstantParams(value=0.5, scale_factor=2.0)
    with pytest.raises(ConfigError) as err:
        registry.create("constant-scorer", "c", {"value": "high"}, handle(), "plugins[4]")
    assert err.value.field == "plugins[4].parameters.value"


def test_a_spec_describes_its_plugin() -> None:
    registry = Registry()
    registry.register(ConstantScorer)
    spec = registry.get("constant-scorer")
    assert spec is not None
    assert spec.summary == "Scores every endpoint the same."
    assert spec.extension_points == ["Scorer"]
    assert spec.parameters() == [ParamDoc("value", "float", "(required)"), ParamDoc("tags", "list[str]", ["x"]),
                                 ParamDoc("scaleFactor", "float", 1.0)]
    assert registry.get("missing") is None
