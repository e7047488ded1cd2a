"""Hostile YAML in the config and the pool file: alias bombs, cycles, deep nesting, Go-style numbers."""

from __future__ import annotations

import random
import textwrap

import pytest

from epp.config.loader import load_config
from epp.config.schema import decode_document
from epp.datalayer.pool import EndpointPool
from epp.datalayer.poolsource import parse_pool_file
from epp.errors import ConfigError
from epp.framework.plugin import Handle
from epp.plugins import default_registry
from epp.yamlsafe import MAX_ALIAS_NODES, MAX_SHOWN, bounded_repr, load

HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def laughs(levels: int = 9, width: int = 10) -> str:
    """A flow mapping whose last key expands to width**levels strings (10**9 by default)."""
    parts = ["k0: &l0 [" + ", ".join(['"lol"'] * width) + "]"]
    parts += [f"k{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "{" + ", ".join(parts) + "}"


def build(text: str) -> object:
    return load_config(text, default_registry(), Handle(pool=EndpointPool(), rng=random.Random(1)))


CONFIG_BOMBS = {
    "in plugin parameters": HEADER + f"plugins:\n- type: queue-scorer\n  parameters: {laughs()}\n",
    "as a profile weight": HEADER + "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: d\n  plugins:\n"
                                    f"  - pluginRef: queue-scorer\n    weight: {laughs()}\n",
    "as feature gates": HEADER + f"featureGates: {laughs()}\n",
    "as a plugin name": HEADER + f"plugins:\n- type: queue-scorer\n  name: {laughs()}\n",
    "as the whole document": laughs(),
}

POOL_BOMBS = {
    "as labels": f"endpoints:\n- {{address: 10.0.0.1, port: 8000, labels: {laughs()}}}\n",
    "as an address": f"endpoints:\n- {{address: {laughs()}, port: 8000}}\n",
    "as the endpoint list": f"endpoints: {laughs()}\n",
}


@pytest.mark.parametrize("text", CONFIG_BOMBS.values(), ids=CONFIG_BOMBS.keys())
def test_billion_laughs_config_is_refused_not_expanded_into_memory(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(text)
    assert err.value.field == "config"
    assert f"aliases expand to more than {MAX_ALIAS_NODES} nodes" in err.value.reason


@pytest.mark.parametrize("text", POOL_BOMBS.values(), ids=POOL_BOMBS.keys())
def test_billion_laughs_pool_file_is_refused_not_expanded_into_memory(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_pool_file(text, "pool.yaml")
    assert err.value.field == "pool.yaml"
    assert "alias bomb" in err.value.reason


def test_anchors_used_a_few_times_in_a_real_config_still_load() -> None:
    config = build(HEADER + textwrap.dedent("""\
        plugins:
        - type: prefix-cache-scorer
          parameters: &prefix {blockSize: 32, maxPrefixBlocksToMatch: 64}
        - name: other-prefix
          type: prefix-cache-scorer
          parameters:
            <<: *prefix
            blockSize: 16
        schedulingProfiles:
        - name: default
          plugins:
          - pluginRef: prefix-cache-scorer
            weight: &w 2
          - pluginRef: other-prefix
            weight: *w
        """))
    assert {"prefix-cache-scorer", "other-prefix"} <= set(config.plugins)  # type: ignore[attr-defined]


def test_aliases_just_under_the_bound_load_and_just_over_are_refused() -> None:
    block = "[" + ", ".join(["1"] * 99) + "]"  # 100 nodes with the sequence itself
    uses = MAX_ALIAS_NODES // 100
    assert len(load(f"a: &b {block}\nc: [{', '.join(['*b'] * uses)}]\n", "x")["c"]) == uses
    with pytest.raises(ConfigError, match="alias bomb"):
        load(f"a: &b {block}\nc: [{', '.join(['*b'] * (uses + 1))}]\n", "x")


@pytest.mark.parametrize("text", ["a: &x [1, *x]\n", "&x {a: {b: *x}}\n"], ids=["sequence", "mapping"])
def test_an_alias_inside_its_own_anchor_is_refused_as_a_cycle(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(text, "pool.yaml")
    assert "cycle" in err.value.reason


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(HEADER + "plugins:\n- type: queue-scorer\n  parameters: {a: " + "[" * 100_000 + "}\n",
                     id="unterminated, in plugin parameters"),
        pytest.param(HEADER + "plugins: " + "[" * 100_000 + "]" * 100_000 + "\n", id="balanced, as the plugin list"),
        pytest.param(HEADER + "plugins:\n" + "".join(" " * i + "- \n" for i in range(1, 2000)), id="block style"),
    ],
)
def test_100000_deep_nesting_in_a_config_is_a_config_error_not_a_traceback(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(text)
    assert err.value.field == "config"
    assert "nest" in err.value.reason


def test_100000_deep_nesting_in_a_pool_entry_is_a_config_error_not_a_traceback() -> None:
    text = "endpoints:\n- {address: 10.0.0.1, port: " + "[" * 100_000 + "]" * 100_000 + "}\n"
    with pytest.raises(ConfigError) as err:
        parse_pool_file(text, "pool.yaml")
    assert err.value.field == "pool.yaml"
    assert "nest" in err.value.reason


@pytest.mark.parametrize(
    ("port", "reason_part"),
    [
        pytest.param(".inf", "must be an integer", id="infinity"),
        pytest.param("-.inf", "must be an integer", id="negative infinity"),
        pytest.param(".nan", "must be an integer", id="NaN"),
        pytest.param("8000.5", "must be an integer", id="a fractional float"),
        pytest.param("true", "must be an integer", id="a bool"),
        pytest.param("[8000]", "must be an integer", id="a list"),
        pytest.param("1e400", "must be an integer", id="a float that overflows"),
        pytest.param("9" * 5000, "must be an integer", id="an integer of 5000 digits"),
        pytest.param("'" + "9" * 5000 + "'", "must be an integer", id="a string of 5000 digits"),
    ],
)
def test_pool_entry_with_inf_float_or_bool_port_names_the_entry_and_field(port: str, reason_part: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_pool_file(f"endpoints:\n- 10.0.0.1:8000\n- {{address: 10.0.0.2, port: {port}}}\n", "pool.yaml")
    assert err.value.field == "pool.yaml.endpoints[1].port"
    assert reason_part in err.value.reason
    assert len(str(err.value)) < 300


def test_a_whole_float_port_is_read_as_go_reads_it() -> None:
    (member,) = parse_pool_file("endpoints:\n- {address: 10.0.0.1, port: 8000.0, metricsPort: 9e3}\n")
    assert (member.port, member.metrics_port) == (8000, 9000)


@pytest.mark.parametrize(
    ("written", "weight"),
    [("1e3", 1000.0), ("1E3", 1000.0), ("+1e-1", 0.1), (".5", 0.5), ("2.", 2.0), ("1_000", 1000.0)],
)
def test_weight_1e3_is_a_number_as_in_go_not_a_string(written: str, weight: float) -> None:
    decoded = decode_document(HEADER + f"schedulingProfiles:\n- name: d\n  plugins:\n  - pluginRef: q\n"
                                       f"    weight: {written}\n")
    assert decoded is not None
    assert decoded.profiles[0].plugins[0].weight == weight


def test_a_number_written_as_a_whole_float_fits_an_integer_parameter_as_in_go() -> None:
    config = build(HEADER + "plugins:\n- type: max-score-picker\n  parameters: {maxNumOfEndpoints: 2e0}\n")
    assert config.plugins["max-score-picker"].params.max_num_of_endpoints == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize(("written", "value"), [("1:30", "1:30"), ("2024-01-01", "2024-01-01"), ("'1e3'", "1e3")])
def test_sexagesimal_dates_and_quoted_numbers_stay_strings_as_in_go(written: str, value: str) -> None:
    assert load(f"a: {written}\n", "x") == {"a": value}


def test_a_huge_value_in_an_error_message_is_truncated() -> None:
    with pytest.raises(ConfigError) as err:
        parse_pool_file("endpoints:\n- {address: 10.0.0.1, port: 1, labels: {a: [" + "x, " * 200_000 + "]}}\n",
                        "pool.yaml")
    assert err.value.field == "pool.yaml.endpoints[0].labels"
    assert len(str(err.value)) < 300


def test_bounded_repr_never_walks_a_whole_graph() -> None:
    shared: list[object] = ["lol"] * 10
    for _ in range(30):  # 10**31 leaves if expanded
        shared = [shared] * 10
    text = bounded_repr({"a": shared, "b": "x" * 10_000})
    assert len(text) <= MAX_SHOWN
    assert text.startswith("{'a': [[[")


def test_not_yaml_at_all_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        load("a: \x00\n", "pool.yaml")
    assert err.value.field == "pool.yaml"
    assert "not valid YAML" in err.value.reason


def test_an_unknown_plugin_type_of_any_length_gives_a_bounded_message() -> None:
    from epp.config.loader import load_config
    from epp.datalayer.pool import EndpointPool
    from epp.errors import ConfigError
    from epp.framework.plugin import Handle
    from epp.plugins import default_registry

    text = ("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- type: "
            + "x" * 5000)
    with pytest.raises(ConfigError) as caught:
        load_config(text, default_registry(), Handle(pool=EndpointPool()))
    assert caught.value.field == "plugins[0].type"
    message = str(caught.value)
    assert "x" * 200 not in message  # the type is cut; what remains is the list of registered types
    assert len(message) < 1000 + sum(len(spec.type_name) + 2 for spec in default_registry())


@pytest.mark.parametrize("field", ["weight", "threshold", "duration"])
def test_a_400_digit_number_is_a_config_error_not_an_overflow(field: str) -> None:
    from epp.config.loader import load_config
    from epp.datalayer.pool import EndpointPool
    from epp.errors import ConfigError
    from epp.framework.plugin import Handle
    from epp.plugins import default_registry

    huge = "1" + "0" * 400
    texts = {
        "weight": f"schedulingProfiles:\n- name: d\n  plugins:\n  - pluginRef: queue-scorer\n    weight: {huge}\n",
        "threshold": f"saturationDetector:\n  queueDepthThreshold: {huge}\n",
        "duration": f"saturationDetector:\n  metricsStalenessThreshold: {huge}\n",
    }
    text = ("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
            "plugins:\n- type: queue-scorer\n" + texts[field])
    with pytest.raises(ConfigError) as caught:
        load_config(text, default_registry(), Handle(pool=EndpointPool()))
    assert "finite" in str(caught.value) or "non-negative" in str(caught.value)
