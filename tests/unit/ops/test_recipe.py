"""``epp recipe``: every recipe loads, overlays match and merge as documented, snapshots set the query."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from epp.config.loader import PickerConfig, load_config
from epp.datalayer.pool import EndpointPool
from epp.framework.plugin import Handle
from epp.ops.cli import add_parser
from epp.ops.recipe import (
    INTENTS,
    MODEL_SERVERS,
    Query,
    RecipeError,
    build_recipe,
    known_accelerators,
    load_overlays,
    matching_overlays,
    merge_layers,
    query_from_snapshot,
)
from epp.plugins import default_registry

ACCELERATORS: list[str | None] = [None, "some-new-gpu", *known_accelerators()]


def load(text: str) -> PickerConfig:
    return load_config(text, default_registry(), Handle(pool=EndpointPool()))


def plugin_types(config: PickerConfig) -> set[str]:
    return {p.typed_name.type for p in config.plugins.values()}


# --- every recipe loads in `epp serve` -----------------------------------------------------


@pytest.mark.parametrize(("model_server", "intent"), list(itertools.product(MODEL_SERVERS, [None, *INTENTS])))
def test_every_recipe_loads_and_does_what_the_query_asked(model_server: str, intent: str | None) -> None:
    for accelerator, slo, flow_control in itertools.product(ACCELERATORS, (False, True), (False, True)):
        query = Query(model_server, accelerator, intent, slo, flow_control)
        recipe = build_recipe(query)
        # With every explanation in comments, the document is still what `epp serve` reads.
        config = load(recipe.to_yaml(context=True))
        where = query.describe()
        assert (config.flow_control is not None) == flow_control, where
        assert ("slo-aware" in config.scheduler.profiles) == slo, where
        assert ("predicted-latency-producer" in plugin_types(config)) == slo, where
        engine = config.plugins["core-metrics-extractor"].params.default_engine  # type: ignore[attr-defined]
        assert engine == {"vllm": "vllm", "sglang": "sglang", "trtllm": "trtllm-serve"}[model_server], where
        assert ("lora-affinity-scorer" in plugin_types(config)) == (intent == "lora" and model_server != "trtllm")
        assert ("prefix-cache-affinity-filter" in plugin_types(config)) == (intent == "prefix-heavy"), where


def test_the_plain_recipe_is_the_projects_default_routing() -> None:
    config = build_recipe(Query()).config
    weights = {e["pluginRef"]: e.get("weight") for e in config["schedulingProfiles"][0]["plugins"]}
    assert weights == {"load-imbalance-filter": None, "queue-scorer": 2, "kv-cache-utilization-scorer": 2,
                       "prefix-cache-scorer": 3, "prefill-load-scorer": 3, "max-score-picker": None}
    assert build_recipe(Query()).applied == ["base"]


def test_flow_control_recipe_matches_the_shipped_example() -> None:
    shipped = yaml.safe_load((Path(__file__).resolve().parents[3] / "config" / "flow-control.yaml").read_text())
    config = build_recipe(Query(flow_control=True)).config
    assert config["featureGates"] == ["flowControl"]
    assert config["flowControl"] == shipped["flowControl"]
    assert config["saturationDetector"] == shipped["saturationDetector"]


# --- matching and order --------------------------------------------------------------------


def names(query: Query) -> list[str]:
    return [o.name for o in matching_overlays(query)]


def test_an_omitted_overlay_field_is_a_wildcard_and_an_unset_query_field_matches_only_wildcards() -> None:
    assert "intent-lora" in names(Query(intent="lora", accelerator="h100"))
    assert "intent-lora" in names(Query(intent="lora"))
    # accelerator unset: the accelerator overlays do not apply, the others still do.
    assert not any(n.startswith("accelerator-") for n in names(Query(intent="lora")))


def test_a_list_of_values_matches_any_of_them_case_insensitively() -> None:
    assert "accelerator-large-memory" in names(Query(accelerator="H200"))
    assert "accelerator-large-memory" in names(Query(accelerator="mi300x"))
    assert "accelerator-large-memory" not in names(Query(accelerator="h100"))


def test_more_specific_overlays_apply_later_and_win() -> None:
    recipe = build_recipe(Query(model_server="trtllm", intent="lora"))
    assert recipe.applied.index("lora-on-trtllm") > recipe.applied.index("intent-lora")
    assert all(e["type"] != "lora-affinity-scorer" for e in recipe.config["plugins"])
    assert "trtllm-serve publishes no LoRA metric" in recipe.to_yaml(context=True)


def test_equally_specific_overlays_apply_in_name_order() -> None:
    order = names(Query(model_server="sglang", intent="latency", slo=True, flow_control=True, accelerator="l4"))
    by_specificity: dict[int, list[str]] = {}
    for overlay in matching_overlays(Query(model_server="sglang", intent="latency", slo=True, flow_control=True,
                                           accelerator="l4")):
        by_specificity.setdefault(overlay.specificity, []).append(overlay.name)
    assert order == [n for s in sorted(by_specificity) for n in by_specificity[s]]
    assert all(group == sorted(group) for group in by_specificity.values())


def all_queries() -> list[Query]:
    return [Query(*q) for q in itertools.product(MODEL_SERVERS, ACCELERATORS, [None, *INTENTS], (False, True),
                                                 (False, True))]


def leaves(config: dict[str, Any]) -> dict[str, Any]:
    return {c.path: ("removed" if c.removed else c.value) for c in merge_layers([("x", "", config)])[1].values()}


def test_no_two_equally_specific_overlays_that_apply_together_disagree_on_a_value() -> None:
    # The name-order tie rule exists, but the shipped data should never need it: a clash
    # between equally specific overlays must be settled by a more specific one.
    overlay_leaves = {o.name: leaves(dict(o.config)) for o in load_overlays()}
    for query in all_queries():
        matched = matching_overlays(query)
        for a, b in itertools.combinations(matched, 2):
            if a.specificity != b.specificity:
                continue
            la, lb = overlay_leaves[a.name], overlay_leaves[b.name]
            settled = {p for o in matched if o.specificity > a.specificity for p in overlay_leaves[o.name]}
            clashes = {p for p in la.keys() & lb.keys() if la[p] != lb[p]} - settled
            assert not clashes, f"{a.name} and {b.name} disagree on {clashes} for {query.describe()}"


def test_query_values_are_checked() -> None:
    with pytest.raises(RecipeError, match="modelServer"):
        Query(model_server="tgi")
    with pytest.raises(RecipeError, match="intent"):
        Query(intent="cheap")


# --- merge ---------------------------------------------------------------------------------


BASE: dict[str, Any] = {"plugins": [{"type": "a", "parameters": {"x": 1, "y": 2}}, {"type": "b"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "a", "weight": 1},
                                                               {"pluginRef": "b", "weight": 1}]}],
        "featureGates": ["one"]}


def test_merge_by_plugin_name_and_profile_entry() -> None:
    overlay = {"plugins": [{"type": "a", "why": "tuned", "parameters": {"y": 5}}, {"type": "c"}],
               "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "b", "weight": 4},
                                                                      {"pluginRef": "c"}]}],
               "featureGates": ["two", "one"]}
    config, choices = merge_layers([("base", "", BASE), ("o", "desc", overlay)])
    assert config["plugins"] == [{"type": "a", "parameters": {"x": 1, "y": 5}}, {"type": "b"}, {"type": "c"}]
    assert config["schedulingProfiles"][0]["plugins"] == [{"pluginRef": "a", "weight": 1},
                                                         {"pluginRef": "b", "weight": 4}, {"pluginRef": "c"}]
    assert config["featureGates"] == ["one", "two"]
    y = choices["plugins[a].parameters.y"]
    assert (y.layer, y.why, y.replaced) == ("o", "tuned", 2)
    assert choices["plugins[a].parameters.x"].layer == "base"
    assert choices["schedulingProfiles[default].plugins[b].weight"].why == "desc"
    assert BASE["plugins"][0] == {"type": "a", "parameters": {"x": 1, "y": 2}}  # inputs untouched


def test_remove_drops_an_entry_and_its_explanations() -> None:
    overlay = {"plugins": [{"type": "b", "remove": True, "why": "not here"}],
               "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "b", "remove": True}]}]}
    config, choices = merge_layers([("base", "", BASE), ("o", "", overlay)])
    assert [p["type"] for p in config["plugins"]] == ["a"]
    assert [p["pluginRef"] for p in config["schedulingProfiles"][0]["plugins"]] == ["a"]
    assert choices["plugins[b]"].removed and choices["plugins[b]"].why == "not here"
    assert "schedulingProfiles[default].plugins[b].weight" not in choices


def test_an_entry_without_identity_is_refused() -> None:
    with pytest.raises(RecipeError, match="no pluginRef/name/type/priority"):
        merge_layers([("bad", "", {"plugins": [{"parameters": {}}]})])


scalars = st.one_of(st.integers(-5, 5), st.booleans(), st.sampled_from(["a", "b", "c"]))
flat = st.dictionaries(st.sampled_from(["p", "q", "r"]), scalars, max_size=3)
docs = st.fixed_dictionaries({}, optional={
    "plugins": st.lists(st.fixed_dictionaries({"type": st.sampled_from(["s1", "s2", "s3"])},
                                              optional={"parameters": flat}), max_size=3),
    "flowControl": flat,
})


@given(docs, docs)
def test_merging_is_idempotent_and_the_later_layer_wins(first: dict[str, Any], second: dict[str, Any]) -> None:
    once, _ = merge_layers([("1", "", first), ("2", "", second)])
    twice, _ = merge_layers([("1", "", first), ("2", "", second), ("2", "", second)])
    assert once == twice
    for path, value in leaves(second).items():
        assert leaves(once).get(path) == value


# --- from a snapshot -----------------------------------------------------------------------


def reading(value: Any) -> dict[str, Any]:
    return {"value": value, "type": type(value).__name__}


SNAPSHOT: dict[str, Any] = {
    "apiVersion": "epp.dev/v1alpha1", "kind": "Snapshot", "metadata": {},
    "measurements": [
        {"type": "Endpoints", "status": "ok", "subtypes": [
            {"subtype": "sim-0", "data": {"label.inference.networking.k8s.io/engine-type": reading("sglang"),
                                          "label.nvidia.com/gpu.product": reading("NVIDIA-H200")}}]},
        {"type": "Metrics", "status": "ok", "subtypes": [
            {"subtype": "sim-0", "data": {"maxActiveModels": reading(4), "activeModels[0]": reading("ad1")}}]},
        {"type": "Config", "status": "ok", "subtypes": [
            {"subtype": "effective", "data": {"plugins[0].type": reading("predicted-latency-producer")}}]},
        {"type": "FlowControl", "status": "ok", "subtypes": [{"subtype": "state", "data": {"enabled": reading(True)}}]},
    ],
}


def test_a_snapshot_sets_engine_accelerator_lora_slo_and_flow_control() -> None:
    found, notes = query_from_snapshot(SNAPSHOT)
    assert found == {"modelServer": "sglang", "accelerator": "h200", "intent": "lora", "slo": True,
                     "flowControl": True}
    assert any("LoRA adapters in the metrics of sim-0" in n for n in notes)


def test_lora_slots_without_adapters_are_not_lora() -> None:
    metrics = {"type": "Metrics", "status": "ok",
               "subtypes": [{"subtype": "sim-0", "data": {"maxActiveModels": reading(1)}}]}
    assert "intent" not in query_from_snapshot({"kind": "Snapshot", "measurements": [metrics]})[0]


def test_failed_measurements_and_other_documents_are_not_read() -> None:
    failed = {**SNAPSHOT, "measurements": [{**m, "status": "failed"} for m in SNAPSHOT["measurements"]]}
    assert query_from_snapshot(failed)[0] == {}
    with pytest.raises(RecipeError, match="not a snapshot"):
        query_from_snapshot({"kind": "EndpointPickerConfig"})


# --- the command ---------------------------------------------------------------------------


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_command_writes_a_loadable_recipe_with_context(tmp_path: Path) -> None:
    out = tmp_path / "picker.yaml"
    assert run(["recipe", "--model-server", "sglang", "--intent", "prefix-heavy", "--accelerator", "H200",
                "--slo", "on", "--flow-control", "off", "--context", "--output", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# epp recipe")
    assert "modelServer=sglang accelerator=h200 intent=prefix-heavy slo=on flowControl=off" in text
    assert ('schedulingProfiles[slo-aware].plugins[prefix-cache-scorer].weight = 2  [slo-prefix-heavy, was 1]'
            in text)
    assert "plugins[prefix-cache-scorer].parameters.lruCapacityPerServer = 62500  [accelerator-large-memory]" in text
    load(text)


def test_command_without_context_prints_no_explanations(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["recipe", "--intent", "lora"]) == 0
    out = capsys.readouterr().out
    assert "why each value" not in out
    assert "overlays applied, least specific first: base, intent-lora" in out


def test_command_reads_the_setup_from_a_snapshot_and_flags_win(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    snap = tmp_path / "snap.yaml"
    snap.write_text(yaml.safe_dump(SNAPSHOT))
    assert run(["recipe", "--snapshot", str(snap), "--flow-control", "off"]) == 0
    out = capsys.readouterr().out
    assert "modelServer=sglang accelerator=h200 intent=lora slo=on flowControl=off" in out
    assert "flowControl=False from the command line (the snapshot suggests True)" in out
    config = load(out)
    assert config.flow_control is None and "lora-affinity-scorer" in plugin_types(config)


def test_command_refuses_a_file_that_is_not_a_snapshot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: EndpointPickerConfig\n")
    assert run(["recipe", "--snapshot", str(bad)]) == 2
    assert "not a snapshot document" in capsys.readouterr().err
    assert run(["recipe", "--snapshot", str(tmp_path / "missing.yaml")]) == 2


def test_command_reports_an_output_it_cannot_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["recipe", "--output", str(tmp_path / "no-such-dir" / "x.yaml")]) == 2
    assert "--output: cannot write" in capsys.readouterr().err


def test_on_off_flags_refuse_other_words() -> None:
    with pytest.raises(SystemExit):
        run(["recipe", "--slo", "maybe"])
