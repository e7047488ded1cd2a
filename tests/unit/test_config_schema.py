"""Strict decoding of the EndpointPickerConfig document (no plugin is built here)."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from epp.config.schema import (
    ConfigDocument,
    DataSourceSpec,
    PriorityBandSpec,
    ProfileEntry,
    decode_document,
    parse_quantity,
)
from epp.errors import ConfigError

HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def doc(body: str = "") -> str:
    return HEADER + textwrap.dedent(body)


def decoded_config(text: str) -> ConfigDocument:
    """Decode a document that is not empty, so the result is a ConfigDocument, not None."""
    decoded = decode_document(text)
    assert isinstance(decoded, ConfigDocument)
    return decoded


def config_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        decode_document(text)
    return err.value


def test_a_header_only_document_decodes_to_an_empty_config() -> None:
    assert decode_document(doc()) == ConfigDocument()


def test_plugins_and_profiles_decode_with_their_config_paths() -> None:
    decoded = decoded_config(doc("""\
        plugins:
        - type: queue-scorer
        - name: picker
          type: max-score-picker
          parameters: {maxNumOfEndpoints: 2}
        schedulingProfiles:
        - name: default
          plugins:
          - pluginRef: queue-scorer
            weight: 2
          - pluginRef: picker
        """))
    first, second = decoded.plugins
    assert (first.name, first.type, first.parameters, first.where) == (
        "queue-scorer", "queue-scorer", None, "plugins[0]")
    assert (second.name, second.type, dict(second.parameters or {})) == ("picker", "max-score-picker",
                                                                         {"maxNumOfEndpoints": 2})
    (profile,) = decoded.profiles
    assert profile.name == "default"
    assert profile.plugins == (
        ProfileEntry("queue-scorer", 2.0, "schedulingProfiles[0].plugins[0]"),
        ProfileEntry("picker", None, "schedulingProfiles[0].plugins[1]"),
    )


@pytest.mark.parametrize(
    ("text", "field", "reason_part"),
    [
        pytest.param("kind: EndpointPickerConfig\n", "apiVersion", "must be", id="a missing apiVersion"),
        pytest.param("apiVersion: inference.networking.x-k8s.io/v1\nkind: EndpointPickerConfig\n", "apiVersion",
                     "inference.networking.x-k8s.io/v1alpha1", id="a wrong apiVersion"),
        pytest.param("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: InferencePool\n", "kind",
                     "EndpointPickerConfig", id="a wrong kind"),
        pytest.param(doc("plugin: []\n"), "plugin", "unknown field", id="an unknown top-level field"),
        pytest.param(doc("featureGates: [flowControl, fastPath]\n"), "featureGates[1]", "'fastPath' is unknown",
                     id="an unknown feature gate"),
        pytest.param(doc("featureGates: flowControl\n"), "featureGates", "expected a list",
                     id="feature gates that are not a list"),
        pytest.param(doc("plugins:\n- name: q\n"), "plugins[0].type", "'q' is missing a type",
                     id="a plugin without a type"),
        pytest.param(doc("plugins:\n- type: queue-scorer\n  params: {}\n"), "plugins[0].params", "unknown field",
                     id="an unknown plugin field"),
        pytest.param(doc("plugins:\n- type: queue-scorer\n  parameters: [1]\n"), "plugins[0].parameters",
                     "expected a mapping", id="parameters that are not a mapping"),
        pytest.param(doc("plugins:\n  type: queue-scorer\n"), "plugins", "expected a list",
                     id="plugins that are not a list"),
        pytest.param(doc("schedulingProfiles:\n- plugins: []\n"), "schedulingProfiles[0].name", "is required",
                     id="a profile without a name"),
        pytest.param(doc("schedulingProfiles:\n- name: p\n  plugins:\n  - weight: 1\n"),
                     "schedulingProfiles[0].plugins[0].pluginRef", "is required", id="a profile entry without a ref"),
        pytest.param(doc("schedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: q\n    weight: heavy\n"),
                     "schedulingProfiles[0].plugins[0].weight", "finite number", id="a weight that is a string"),
        pytest.param(doc("schedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: q\n    weight: .nan\n"),
                     "schedulingProfiles[0].plugins[0].weight", "finite number", id="a NaN weight"),
        pytest.param(doc("schedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: q\n    weight: .inf\n"),
                     "schedulingProfiles[0].plugins[0].weight", "finite number", id="an infinite weight"),
        pytest.param(doc("schedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: q\n    weight: true\n"),
                     "schedulingProfiles[0].plugins[0].weight", "finite number", id="a weight that is a bool"),
        pytest.param(doc("parser: openai-parser\n"), "parser", "expected a mapping", id="a parser that is not a ref"),
        pytest.param(doc("parser: {pluginRef: ''}\n"), "parser.pluginRef", "is required", id="an empty parser ref"),
        pytest.param(doc("saturationDetector: {name: x}\n"), "saturationDetector.name", "unknown field",
                     id="a saturation detector with an unknown field"),
        pytest.param(doc("dataLayer:\n  sources:\n  - extractors: []\n"), "dataLayer.sources[0].pluginRef",
                     "is required", id="a data source without a ref"),
        pytest.param(doc("dataLayer:\n  sources:\n  - pluginRef: s\n    extractors: [e]\n"),
                     "dataLayer.sources[0].extractors[0]", "expected a mapping", id="an extractor that is not a ref"),
        pytest.param(doc("dataLayer:\n  source: []\n"), "dataLayer.source", "unknown field",
                     id="an unknown data layer field"),
        pytest.param("- a\n- b\n", "config", "expected a mapping", id="a document that is not a mapping"),
        pytest.param("plugins: [\n", "config", "not valid YAML", id="invalid YAML"),
    ],
)
def test_invalid_documents_fail_naming_the_field(text: str, field: str, reason_part: str) -> None:
    err = config_error(text)
    assert err.field == field
    assert reason_part in err.reason


def test_every_registered_feature_gate_is_accepted() -> None:
    decoded = decoded_config(doc("featureGates: [dataLayer, enableLegacyMetrics, flowControl]\n"))
    assert decoded.feature_gates == {"dataLayer", "enableLegacyMetrics", "flowControl"}


@pytest.mark.parametrize("key", ["dataLayer", "data"])
def test_data_is_accepted_as_the_older_name_of_data_layer(key: str) -> None:
    decoded = decoded_config(doc(f"""\
        {key}:
          sources:
          - pluginRef: metrics-data-source
            extractors:
            - pluginRef: core-metrics-extractor
        """))
    assert decoded.data_sources == (
        DataSourceSpec("metrics-data-source", ("core-metrics-extractor",), f"{key}.sources[0]"),
    )


def test_data_and_data_layer_together_are_rejected() -> None:
    err = config_error(doc("dataLayer: {sources: []}\ndata: {sources: []}\n"))
    assert err.field == "data"
    assert "not both" in err.reason


def test_an_absent_data_layer_differs_from_an_empty_one() -> None:
    assert decoded_config(doc()).data_sources is None
    assert decoded_config(doc("dataLayer: {sources: []}\n")).data_sources == ()


def test_parser_and_saturation_detector_refs_are_read() -> None:
    decoded = decoded_config(doc("parser: {pluginRef: my-parser}\nsaturationDetector: {pluginRef: det}\n"))
    assert (decoded.parser_ref, decoded.saturation_detector_ref) == ("my-parser", "det")


# --- flowControl ----------------------------------------------------------------------


def test_a_full_flow_control_section_decodes_quantities_and_durations() -> None:
    decoded = decoded_config(doc("""\
        featureGates: [flowControl]
        flowControl:
          maxBytes: 10Gi
          maxRequests: 5000
          defaultRequestTTL: 1m30s
          usageLimitPolicyPluginRef: static-usage-limit-policy
          defaultPriorityBand: {maxBytes: 1Gi, maxRequests: 500}
          priorityBands:
          - priority: 100
            maxBytes: 5Gi
            maxRequests: 50
            fairnessPolicyRef: global-strict-fairness-policy
            orderingPolicyRef: fcfs-ordering-policy
          - priority: -1
            maxBytes: 500M
        """))
    fc = decoded.flow_control
    assert fc is not None
    assert (fc.max_bytes, fc.max_requests, fc.default_request_ttl) == (10 * 2**30, 5000, 90.0)
    assert fc.usage_limit_policy_plugin_ref == "static-usage-limit-policy"
    assert fc.default_priority_band == PriorityBandSpec(priority=0, max_bytes=2**30, max_requests=500)
    assert fc.priority_bands == (
        PriorityBandSpec(100, 5 * 2**30, 50, "global-strict-fairness-policy", "fcfs-ordering-policy"),
        PriorityBandSpec(-1, 500_000_000),
    )


@pytest.mark.parametrize(
    ("section", "field", "reason_part"),
    [
        pytest.param("{maxBytes: lots}", "flowControl.maxBytes", "quantity", id="a quantity that is a word"),
        pytest.param("{maxBytes: 10Gb}", "flowControl.maxBytes", "quantity", id="a quantity with a bad suffix"),
        pytest.param("{maxBytes: -1Gi}", "flowControl.maxBytes", "non-negative", id="a negative quantity"),
        pytest.param("{maxRequests: '5000'}", "flowControl.maxRequests", "expected an integer",
                     id="max requests as a string"),
        pytest.param("{defaultRequestTTL: one minute}", "flowControl.defaultRequestTTL", "duration",
                     id="a ttl that is not a duration"),
        pytest.param("{maxQueue: 1}", "flowControl.maxQueue", "unknown field", id="an unknown flow control key"),
        pytest.param("{priorityBands: [{maxBytes: 1Gi}]}", "flowControl.priorityBands[0].priority", "is required",
                     id="a band without a priority"),
        pytest.param("{priorityBands: [{priority: 1, weight: 2}]}", "flowControl.priorityBands[0].weight",
                     "unknown field", id="an unknown band key"),
        pytest.param("{priorityBands: [{priority: high}]}", "flowControl.priorityBands[0].priority",
                     "expected an integer", id="a priority that is not an integer"),
        pytest.param("{priorityBands: [{priority: 1}, {priority: 2}, {priority: 1}]}", "flowControl.priorityBands",
                     "unique", id="duplicate band priorities"),
        pytest.param("{defaultPriorityBand: {maxBytes: 1Gi, priorty: 3}}", "flowControl.defaultPriorityBand.priorty",
                     "unknown field", id="a misspelt key in the default band"),
    ],
)
def test_flow_control_errors_name_the_field(section: str, field: str, reason_part: str) -> None:
    err = config_error(doc(f"flowControl: {section}\n"))
    assert err.field == field
    assert reason_part in err.reason


def test_a_flow_control_ttl_given_as_a_number_is_seconds() -> None:
    fc = decoded_config(doc("flowControl: {defaultRequestTTL: 60}\n")).flow_control
    assert fc is not None and fc.default_request_ttl == 60.0


# --- parse_quantity ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("10Gi", 10 * 2**30, id="binary gibibytes"),
        pytest.param("512Mi", 512 * 2**20, id="binary mebibytes"),
        pytest.param("4Ki", 4096, id="binary kibibytes"),
        pytest.param("1Ti", 2**40, id="binary tebibytes"),
        pytest.param("500M", 500_000_000, id="decimal megabytes"),
        pytest.param("2k", 2000, id="decimal kilo is lower-case k"),
        pytest.param("3G", 3_000_000_000, id="decimal gigabytes"),
        pytest.param("1.5Gi", 3 * 2**29, id="a fractional binary quantity"),
        pytest.param("5000", 5000, id="a plain number string"),
        pytest.param(1024, 1024, id="an integer"),
        pytest.param("0", 0, id="zero"),
    ],
)
def test_parse_quantity_reads_kubernetes_quantities(value: Any, expected: int) -> None:
    assert parse_quantity(value, "q") == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("10GB", id="an SI suffix spelt the wrong way"),
        pytest.param("10K", id="upper-case K is not a Kubernetes suffix"),
        pytest.param("Gi", id="a suffix without a number"),
        pytest.param("-5", id="a negative number"),
        pytest.param("ten", id="a word"),
        pytest.param(True, id="a bool"),
        pytest.param(None, id="null"),
    ],
)
def test_parse_quantity_rejects_what_is_not_a_quantity(value: Any) -> None:
    with pytest.raises(ConfigError) as err:
        parse_quantity(value, "flowControl.maxBytes")
    assert err.value.field == "flowControl.maxBytes"


def test_gie_v1_3_inline_saturation_thresholds_are_accepted() -> None:
    decoded = decoded_config(doc("saturationDetector: {queueDepthThreshold: 5, kvCacheUtilThreshold: 0.8, "
                                 "metricsStalenessThreshold: 200ms}\n"))
    assert decoded.saturation_detector_ref == "utilization-detector"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param("saturationDetector: {queueDepthThreshold: -1}\n", "saturationDetector.queueDepthThreshold",
                     id="a negative queue threshold"),
        pytest.param("saturationDetector: {metricsStalenessThreshold: soon}\n",
                     "saturationDetector.metricsStalenessThreshold", id="a staleness that is not a duration"),
        pytest.param("saturationDetector: {threshold: 1}\n", "saturationDetector.threshold", id="an unknown key"),
    ],
)
def test_bad_inline_saturation_thresholds_name_the_field(body: str, field: str) -> None:
    assert config_error(doc(body)).field == field


def test_a_document_of_only_comments_decodes_to_nothing() -> None:
    assert decode_document("# just a comment\n") is None
