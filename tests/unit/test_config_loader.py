"""Building a running configuration: defaults, auto-created plugins, validation errors."""

from __future__ import annotations

import logging
import random
import textwrap
from pathlib import Path
from typing import Any

import pytest

from epp.config.loader import PickerConfig, load_config
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.pool import EndpointPool
from epp.errors import ConfigError
from epp.flowcontrol.objectives import parse_objectives
from epp.framework.datalayer import Extractor
from epp.framework.plugin import BasePlugin, Handle, TypedName
from epp.framework.registry import Registry
from epp.plugins import default_registry
from epp.plugins.prefix.producer import ApproxPrefixCacheProducer

HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"

# /work/shared/reference/gie-epp.md §3: the Helm chart's default config (latency predictor off).
HELM_DEFAULT = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: metrics-data-source
  parameters: {scheme: "http", path: "/metrics", insecureSkipVerify: true}
- type: core-metrics-extractor        # parameters.defaultEngine set if modelServerType != vllm
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
"""

# Same section: the Helm chart's config with latencyPredictor.enabled.
HELM_LATENCY_PREDICTOR = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: predicted-latency-producer
- name: strict-affinity-filter
  type: prefix-cache-affinity-filter
  parameters: {affinityThreshold: 0.99}
- name: loose-affinity-filter
  type: prefix-cache-affinity-filter
  parameters: {affinityThreshold: 0.80}
- type: latency-scorer
- type: weighted-random-picker
- type: slo-headroom-tier-filter
- type: latency-slo-admitter
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: predicted-latency-producer
  - pluginRef: strict-affinity-filter
  - pluginRef: slo-headroom-tier-filter
  - pluginRef: loose-affinity-filter
  - pluginRef: latency-scorer
  - pluginRef: weighted-random-picker
"""

GIE_DEFAULT_TYPES = {
    "queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer", "approx-prefix-cache-producer",
    "metrics-data-source", "core-metrics-extractor", "single-profile-handler", "max-score-picker", "openai-parser",
    "utilization-detector",  # the default saturation detector (legacy admission, flow control)
}


CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def load(text: str | None, registry: Registry | None = None) -> PickerConfig:
    handle = Handle(pool=EndpointPool(), rng=random.Random(1))
    return load_config(text, registry or default_registry(), handle)


def cfg(body: str) -> str:
    return HEADER + textwrap.dedent(body)


def load_error(text: str, registry: Registry | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load(text, registry)
    return err.value


def types(config: PickerConfig) -> dict[str, str]:
    return {name: plugin.typed_name.type for name, plugin in config.plugins.items()}


def summary(config: PickerConfig) -> dict[str, Any]:
    """What a user would compare between two configs: plugins, profiles, wiring."""
    profiles = {
        name: {
            "filters": [f.typed_name.name for f in p.filters],  # type: ignore[attr-defined]
            "scorers": [(ws.scorer.typed_name.name, ws.weight) for ws in p.scorers],  # type: ignore[attr-defined]
            "picker": p.picker.typed_name.name,  # type: ignore[attr-defined]
        }
        for name, p in config.scheduler.profiles.items()
    }
    return {
        "types": sorted(types(config).values()),
        "profiles": profiles,
        "handler": config.scheduler.handler.typed_name.type,  # type: ignore[attr-defined]
        "parser": config.parser.typed_name.type,  # type: ignore[attr-defined]
        "producers": [p.typed_name.type for p in config.producers],  # type: ignore[attr-defined]
        "data": [(b.source.typed_name.type, [e.typed_name.type for e in b.extractors])  # type: ignore[attr-defined]
                 for b in config.data_bindings],
    }


# --- GIE defaults and the Helm configs ---------------------------------------------------


def test_the_helm_default_config_loads_unchanged_with_gie_weights_and_auto_plugins() -> None:
    config = load(HELM_DEFAULT)
    assert summary(config) == {
        "types": sorted(GIE_DEFAULT_TYPES),
        "profiles": {"default": {
            "filters": [],
            "scorers": [("queue-scorer", 2.0), ("kv-cache-utilization-scorer", 2.0), ("prefix-cache-scorer", 3.0)],
            "picker": "max-score-picker",
        }},
        "handler": "single-profile-handler",
        "parser": "openai-parser",
        "producers": ["approx-prefix-cache-producer"],
        "data": [("metrics-data-source", ["core-metrics-extractor"])],
    }
    source = config.plugins["metrics-data-source"]
    assert (source.params.scheme, source.params.path, source.params.insecure_skip_verify) == ("http", "/metrics", True)


@pytest.mark.parametrize(
    "text",
    [pytest.param(None, id="no config"), pytest.param("", id="an empty config"),
     pytest.param("  \n\n", id="a blank config")],
)
def test_the_built_in_default_is_the_gie_default_plus_prefill_load(text: str | None) -> None:
    built_in = summary(load(text))
    gie = summary(load(HELM_DEFAULT))
    assert built_in["profiles"]["default"]["scorers"] == [
        *gie["profiles"]["default"]["scorers"], ("prefill-load-scorer", 3.0)]
    assert sorted(built_in["producers"]) == ["approx-prefix-cache-producer", "inflight-load-producer"]
    assert built_in == summary(load((CONFIG_DIR / "default.yaml").read_text()))


@pytest.mark.parametrize("name", ["gie-default.yaml", "helm-default.yaml"])
def test_the_checked_in_gie_configs_load_as_the_helm_default(name: str) -> None:
    assert summary(load((CONFIG_DIR / name).read_text())) == summary(load(HELM_DEFAULT))


PICKER_CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.yaml") if "kind: EndpointPickerConfig" in p.read_text())


@pytest.mark.parametrize("name", PICKER_CONFIGS)
def test_every_example_config_loads(name: str) -> None:
    assert load((CONFIG_DIR / name).read_text()).scheduler.profiles


def test_the_example_objectives_file_loads() -> None:
    assert parse_objectives((CONFIG_DIR / "objectives.yaml").read_text()) == {"interactive": 100, "batch": -1}


def test_the_helm_latency_predictor_config_loads_unchanged() -> None:
    profile = load(HELM_LATENCY_PREDICTOR).scheduler.profiles["default"]
    assert [f.typed_name.name for f in profile.filters] == [  # type: ignore[attr-defined]
        "strict-affinity-filter", "slo-headroom-tier-filter", "loose-affinity-filter"]
    assert [ws.scorer.typed_name.name for ws in profile.scorers] == ["latency-scorer"]  # type: ignore[attr-defined]
    assert profile.picker.typed_name.name == "weighted-random-picker"  # type: ignore[attr-defined]


# --- system defaults --------------------------------------------------------------------


def test_a_scorer_without_a_weight_gets_weight_one() -> None:
    config = load(cfg("""\
        plugins:
        - type: queue-scorer
        - type: kv-cache-utilization-scorer
        schedulingProfiles:
        - name: default
          plugins:
          - pluginRef: queue-scorer
          - pluginRef: kv-cache-utilization-scorer
            weight: 0
        """))
    assert summary(config)["profiles"]["default"]["scorers"] == [
        ("queue-scorer", 1.0), ("kv-cache-utilization-scorer", 0.0)]


def test_without_profiles_a_default_profile_holds_every_filter_scorer_and_picker() -> None:
    config = load(cfg("""\
        plugins:
        - type: load-imbalance-filter
        - type: queue-scorer
        - type: random-picker
        """))
    assert summary(config)["profiles"] == {"default": {
        "filters": ["load-imbalance-filter"], "scorers": [("queue-scorer", 1.0)], "picker": "random-picker"}}


def test_a_profile_missing_a_picker_gets_the_first_configured_picker() -> None:
    config = load(cfg("""\
        plugins:
        - type: queue-scorer
        - name: first
          type: weighted-random-picker
        - name: second
          type: random-picker
        schedulingProfiles:
        - name: default
          plugins:
          - pluginRef: queue-scorer
        """))
    assert summary(config)["profiles"]["default"]["picker"] == "first"
    assert "max-score-picker" not in config.plugins


def test_a_profile_without_any_configured_picker_gets_an_auto_created_max_score_picker() -> None:
    config = load(cfg("plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: p\n  plugins:\n"
                      "  - pluginRef: queue-scorer\n"))
    assert types(config)["max-score-picker"] == "max-score-picker"
    assert summary(config)["profiles"]["p"]["picker"] == "max-score-picker"


def test_an_empty_data_layer_wires_no_source_and_creates_none() -> None:
    config = load(cfg("plugins:\n- type: queue-scorer\ndataLayer: {sources: []}\n"))
    assert config.data_bindings == ()
    assert "metrics-data-source" not in config.plugins


@pytest.mark.parametrize("key", ["dataLayer", "data"])
def test_an_explicit_data_layer_wires_the_named_plugins(key: str) -> None:
    config = load(cfg(f"""\
        plugins:
        - type: queue-scorer
        - name: scrape
          type: metrics-data-source
          parameters: {{path: /stats}}
        - name: extract
          type: core-metrics-extractor
        {key}:
          sources:
          - pluginRef: scrape
            extractors:
            - pluginRef: extract
        """))
    (binding,) = config.data_bindings
    assert binding.source is config.plugins["scrape"]
    assert binding.extractors == (config.plugins["extract"],)
    assert "metrics-data-source" not in config.plugins  # nothing auto-created beside the named ones


def test_plugins_are_sorted_into_the_request_lifecycle_lists() -> None:
    config = load(cfg("plugins:\n- type: token-load-scorer\n"))
    inflight = config.plugins["inflight-load-producer"]
    assert config.producers == (inflight,)
    assert config.pre_request == (inflight,)
    assert config.response_complete == (inflight,)
    assert config.admitters == ()


# --- auto-created data producers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("plugin_type", "producer_type"),
    [
        pytest.param("prefix-cache-scorer", "approx-prefix-cache-producer",
                     id="prefix-cache-scorer gets the approximate prefix producer"),
        pytest.param("prefix-cache-affinity-filter", "approx-prefix-cache-producer",
                     id="prefix-cache-affinity-filter gets the approximate prefix producer"),
        pytest.param("token-load-scorer", "inflight-load-producer",
                     id="token-load-scorer gets the in-flight load producer"),
        pytest.param("prefill-load-scorer", "inflight-load-producer",
                     id="prefill-load-scorer gets the in-flight load producer"),
    ],
)
def test_a_config_naming_only_a_consumer_gets_its_default_producer(plugin_type: str, producer_type: str) -> None:
    config = load(cfg(f"plugins:\n- type: {plugin_type}\n"))
    assert types(config)[producer_type] == producer_type
    assert [p.typed_name.type for p in config.producers] == [producer_type]  # type: ignore[attr-defined]


def test_two_consumers_of_one_key_share_one_auto_created_producer() -> None:
    config = load(cfg("plugins:\n- type: token-load-scorer\n- type: load-imbalance-filter\n"))
    assert list(types(config).values()).count("inflight-load-producer") == 1


def test_a_configured_producer_under_its_own_name_is_used_instead_of_a_new_one() -> None:
    config = load(cfg("""\
        plugins:
        - name: my-prefix
          type: approx-prefix-cache-producer
          parameters: {blockSizeTokens: 8}
        - type: prefix-cache-scorer
        """))
    assert list(types(config).values()).count("approx-prefix-cache-producer") == 1
    assert config.producers == (config.plugins["my-prefix"],)


@pytest.mark.parametrize(
    ("legacy", "expected"),
    [
        pytest.param("{}", {}, id="no legacy parameters keep the producer defaults"),
        pytest.param("{hashBlockSize: 64}", {"block_size_tokens": 16},
                     id="v1.0 hashBlockSize in characters becomes tokens (4 characters per token)"),
        pytest.param("{blockSize: 32}", {"block_size_tokens": 32}, id="v1.3 blockSize is tokens"),
        pytest.param("{blockSize: 8, hashBlockSize: 64}", {"block_size_tokens": 8},
                     id="blockSize wins over hashBlockSize"),
        pytest.param("{maxPrefixBlocksToMatch: 12}", {"max_prefix_blocks_to_match": 12},
                     id="maxPrefixBlocksToMatch passes through"),
        pytest.param("{lruCapacityPerServer: 500}", {"lru_capacity_per_server": 500},
                     id="lruCapacityPerServer passes through"),
        pytest.param("{autoTune: false}", {"auto_tune": False}, id="autoTune passes through"),
    ],
)
def test_legacy_prefix_scorer_parameters_configure_the_auto_created_producer(
    legacy: str, expected: dict[str, Any]
) -> None:
    config = load(f"{HEADER}plugins:\n- type: prefix-cache-scorer\n  parameters: {legacy}\n")
    producer = config.plugins["approx-prefix-cache-producer"]
    assert isinstance(producer, ApproxPrefixCacheProducer)
    defaults = {"auto_tune": True, "block_size_tokens": 16, "max_prefix_blocks_to_match": 256,
                "lru_capacity_per_server": 31250}
    params = producer.params
    assert {k: getattr(params, k) for k in defaults} == {**defaults, **expected}
    assert producer.index.default_capacity == params.lru_capacity_per_server


def test_legacy_prefix_scorer_parameters_apply_even_when_another_consumer_is_listed_first() -> None:
    config = load(cfg("""\
        plugins:
        - type: prefix-cache-affinity-filter
        - type: prefix-cache-scorer
          parameters: {blockSize: 32}
        """))
    assert config.plugins["approx-prefix-cache-producer"].params.block_size_tokens == 32


def test_legacy_prefix_scorer_parameters_are_ignored_with_a_warning_when_the_producer_is_configured(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        config = load(cfg("""\
            plugins:
            - type: approx-prefix-cache-producer
            - type: prefix-cache-scorer
              parameters: {blockSize: 32}
            """))
    assert config.plugins["approx-prefix-cache-producer"].params.block_size_tokens == 16
    assert any("blockSize" in r.getMessage() or "ignored" in r.getMessage() for r in caplog.records
               if r.levelno >= logging.WARNING), "the ignored legacy parameters were not reported"


# --- validation errors --------------------------------------------------------------------


class BytesSource(BasePlugin):
    """A data source producing raw bytes, which no in-tree extractor reads (test only)."""

    TYPE = "bytes-source"

    def output_type(self) -> type:
        return bytes

    def bind_extractors(self, extractors: list[Extractor]) -> None:
        return None

    async def collect(self, endpoint: Endpoint) -> bytes:
        return b""

    async def aclose(self) -> None:
        return None


def test_an_extractor_that_cannot_read_its_source_output_is_rejected() -> None:
    registry = default_registry()
    registry.register(BytesSource)
    err = load_error(cfg("""\
        plugins:
        - type: queue-scorer
        - type: bytes-source
        - type: core-metrics-extractor
        dataLayer:
          sources:
          - pluginRef: bytes-source
            extractors:
            - pluginRef: core-metrics-extractor
        """), registry)
    assert err.field == "dataLayer.sources[0].extractors"
    assert err.reason == ("extractor 'core-metrics-extractor' reads ScrapedSeries, "
                          "source 'bytes-source' produces bytes")


@pytest.mark.parametrize(
    ("body", "field", "reason_part"),
    [
        pytest.param("plugins:\n- type: queue-scorer\n- type: queue-scorer\n", "plugins[1].name",
                     "duplicate plugin name 'queue-scorer'", id="two plugins with the same default name"),
        pytest.param("plugins:\n- {name: a, type: queue-scorer}\n- {name: a, type: kv-cache-utilization-scorer}\n",
                     "plugins[1].name", "duplicate plugin name 'a'", id="two plugins with the same explicit name"),
        pytest.param("plugins:\n- name: q\n", "plugins[0].type", "missing a type", id="a plugin without a type"),
        pytest.param("plugins:\n- type: queue-scorer\n- type: no-such-scorer\n", "plugins[1].type",
                     "unknown plugin type 'no-such-scorer'", id="an unregistered plugin type"),
        pytest.param("plugins:\n- type: max-score-picker\n  parameters: {maxNumOfEndpoints: '2'}\n",
                     "plugins[0].parameters.maxNumOfEndpoints", "expected an integer",
                     id="a parameter of the wrong type"),
        pytest.param("plugins:\n- type: max-score-picker\n  parameters: {maxNumOfEndpoints: 0}\n",
                     "plugins[0].parameters.maxNumOfEndpoints", "at least 1", id="a parameter out of range"),
        pytest.param("plugins:\n- type: token-load-scorer\n  parameters: {queueThreshold: 5}\n",
                     "plugins[0].parameters.queueThreshold", "unknown parameter", id="a misspelt parameter"),
        pytest.param("plugins:\n- type: queue-scorer\n  parameters: {weight: 2}\n", "plugins[0].parameters",
                     "queue-scorer takes no parameters", id="parameters for a plugin that takes none"),
        pytest.param("plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: p\n  plugins:\n"
                     "  - pluginRef: queue-scorer\n  - pluginRef: kv\n",
                     "schedulingProfiles[0].plugins[1].pluginRef", "references undefined plugin 'kv'",
                     id="a profile referencing an undefined plugin"),
        pytest.param("plugins:\n- type: queue-scorer\n- type: random-picker\n- type: max-score-picker\n"
                     "schedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: random-picker\n"
                     "  - pluginRef: queue-scorer\n  - pluginRef: max-score-picker\n",
                     "schedulingProfiles[0].plugins[2].pluginRef", "already has picker 'random-picker'",
                     id="two pickers in one profile"),
        pytest.param("plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: p\n- name: p\n",
                     "schedulingProfiles[1].name", "duplicate profile name 'p'", id="two profiles with one name"),
        pytest.param("plugins:\n- {name: h1, type: single-profile-handler}\n"
                     "- {name: h2, type: single-profile-handler}\n",
                     "plugins", "multiple profile handlers found ('h1', 'h2')", id="two profile handlers"),
        pytest.param("plugins:\n- type: single-profile-handler\n- type: queue-scorer\nschedulingProfiles:\n"
                     "- name: a\n- name: b\n", "schedulingProfiles", "exactly one scheduling profile",
                     id="single-profile-handler with two profiles"),
        pytest.param("plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: a\n- name: b\n",
                     "plugins", "no profile handler configured", id="several profiles without a handler"),
        pytest.param("plugins:\n- type: queue-scorer\nparser: {pluginRef: my-parser}\n", "parser.pluginRef",
                     "references undefined plugin 'my-parser'", id="a parser ref to an undefined plugin"),
        pytest.param("plugins:\n- type: queue-scorer\nparser: {pluginRef: queue-scorer}\n", "parser.pluginRef",
                     "is not a parser", id="a parser ref to a plugin that is not a parser"),
        pytest.param("plugins:\n- type: queue-scorer\ndataLayer:\n  sources:\n  - pluginRef: scrape\n",
                     "dataLayer.sources[0].pluginRef", "references undefined plugin 'scrape'",
                     id="a data source ref to an undefined plugin"),
        pytest.param("plugins:\n- type: metrics-data-source\ndata:\n  sources:\n  - pluginRef: metrics-data-source\n"
                     "    extractors:\n    - pluginRef: extract\n",
                     "data.sources[0].extractors[0].pluginRef", "references undefined plugin 'extract'",
                     id="an extractor ref to an undefined plugin under the older data key"),
        pytest.param("plugins:\n- type: queue-scorer\ndataLayer:\n  sources:\n  - pluginRef: queue-scorer\n",
                     "dataLayer.sources[0].pluginRef", "is not a data source", id="a source that is not a data source"),
        pytest.param("plugins:\n- type: metrics-data-source\n- type: queue-scorer\ndataLayer:\n  sources:\n"
                     "  - pluginRef: metrics-data-source\n    extractors:\n    - pluginRef: queue-scorer\n",
                     "dataLayer.sources[0].extractors", "is not an extractor", id="an extractor that is not one"),
        pytest.param("plugins:\n- type: queue-scorer\nsaturationDetector: {pluginRef: detector}\n",
                     "saturationDetector.pluginRef", "references undefined plugin 'detector'",
                     id="a saturation detector ref to an undefined plugin"),
        pytest.param("featureGates: [flowControl]\nflowControl:\n  priorityBands:\n  - {priority: 1, "
                     "orderingPolicyRef: nope}\n", "flowControl.priorityBands[0].orderingPolicyRef",
                     "undefined plugin", id="a band naming an undefined ordering policy"),
        pytest.param("featureGates: [flowControl]\nflowControl: {usageLimitPolicyPluginRef: fcfs-ordering-policy}\n",
                     "flowControl.usageLimitPolicyPluginRef", "not a UsageLimitPolicy",
                     id="a usage limit naming a policy of another kind"),
        pytest.param("featureGates: [flowControl]\nplugins:\n- {name: q, type: queue-scorer}\nflowControl:\n"
                     "  defaultPriorityBand: {fairnessPolicyRef: q}\n",
                     "flowControl.defaultPriorityBand.fairnessPolicyRef",
                     "not a FairnessPolicy", id="a band naming a plugin that is not a fairness policy"),
        pytest.param("saturationDetector: {pluginRef: queue-scorer}\nplugins:\n- {type: queue-scorer}\n",
                     "saturationDetector.pluginRef", "not a saturation detector",
                     id="a saturation detector ref to a scorer"),
        pytest.param("plugins:\n- type: metrics-data-source\n  parameters: {path: metrics}\n",
                     "plugins[0].parameters.path", "must start with '/'", id="a metrics path without a slash"),
        pytest.param("plugins:\n- type: core-metrics-extractor\n  parameters: {defaultEngine: tgi}\n",
                     "plugins[0].parameters.defaultEngine", "unknown engine", id="an unknown default engine"),
    ],
)
def test_invalid_configs_fail_naming_the_field(body: str, field: str, reason_part: str) -> None:
    err = load_error(HEADER + body)
    assert err.field == field
    assert reason_part in err.reason


def test_the_default_saturation_detector_name_is_accepted_without_a_plugin() -> None:
    detector = load(cfg("saturationDetector: {pluginRef: utilization-detector}\n")).saturation_detector
    assert detector.typed_name == TypedName("utilization-detector", "utilization-detector")  # type: ignore[attr-defined]


def test_gie_v1_3_inline_thresholds_configure_the_default_detector() -> None:
    config = load(cfg("saturationDetector: {queueDepthThreshold: 10, kvCacheUtilThreshold: 0.9}\n"))
    params = config.saturation_detector.params  # type: ignore[attr-defined]
    assert (params.queue_depth_threshold, params.kv_cache_util_threshold) == (10, 0.9)


def test_flow_control_without_its_feature_gate_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        config = load(cfg("flowControl: {maxRequests: 10}\n"))
    assert config.flow_control is None
    assert any("feature gate" in r.getMessage() for r in caplog.records)


def test_flow_control_with_its_gate_builds_bands_with_go_defaults() -> None:
    config = load(cfg("""\
        featureGates: [flowControl]
        flowControl:
          maxRequests: 10
          defaultRequestTTL: 30s
          defaultPriorityBand: {maxRequests: 7}
          priorityBands:
          - {priority: 100, maxBytes: 1Mi, fairnessPolicyRef: round-robin-fairness-policy}
          - {priority: -1, orderingPolicyRef: edf-ordering-policy}
        """))
    fc = config.flow_control
    assert fc is not None
    assert (fc.max_requests, fc.max_bytes, fc.default_ttl) == (10, 0, 30.0)
    high, low = fc.bands[100], fc.bands[-1]
    assert (high.max_bytes, high.max_requests) == (2**20, 7)  # unset fields come from defaultPriorityBand
    assert high.fairness.typed_name.type == "round-robin-fairness-policy"  # type: ignore[attr-defined]
    assert high.ordering.typed_name.type == "fcfs-ordering-policy"  # type: ignore[attr-defined]
    assert low.ordering.typed_name.type == "edf-ordering-policy"  # type: ignore[attr-defined]
    assert low.max_bytes == 1_000_000_000  # Go's band default
    assert fc.default_band.fairness.typed_name.type == "global-strict-fairness-policy"  # type: ignore[attr-defined]
    assert fc.usage_limit.typed_name.type == "static-usage-limit-policy"  # type: ignore[attr-defined]


def test_flow_control_policies_may_be_configured_plugins() -> None:
    config = load(cfg("""\
        featureGates: [flowControl]
        plugins:
        - {name: strict, type: static-usage-limit-policy, parameters: {threshold: 0.5}}
        flowControl: {usageLimitPolicyPluginRef: strict}
        """))
    assert config.flow_control is not None
    assert config.flow_control.usage_limit.ceiling(0, 0.0, (0,)) == 0.5


def test_a_config_of_only_comments_runs_the_default() -> None:
    assert summary(load("# nothing configured yet\n")) == summary(load(None))


def test_the_producers_own_parameter_names_on_the_prefix_scorer_configure_it() -> None:
    config = load(cfg("""\
        plugins:
        - type: prefix-cache-scorer
          parameters: {blockSizeTokens: 64, maxPrefixTokensToMatch: 2048}
        """))
    producer = config.plugins["approx-prefix-cache-producer"]
    assert (producer.params.block_size_tokens, producer.params.max_prefix_tokens_to_match) == (64, 2048)
