"""InferenceObjectives from ``--objectives-file``: parsing, the store, and the file watcher."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from epp.errors import ConfigError
from epp.flowcontrol.objectives import ObjectivesFileWatcher, ObjectiveStore, parse_objectives


def objective(name: str, priority: object = None, pool: str = "pool", extra: str = "") -> str:
    spec_priority = "" if priority is None else f"  priority: {priority}\n"
    return (f"apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceObjective\n"
            f"metadata:\n  name: {name}\nspec:\n{spec_priority}  poolRef:\n    name: {pool}\n{extra}")


def indented(text: str, prefix: str) -> str:
    lines = text.splitlines()
    return "\n".join([prefix + lines[0], *("  " + line for line in lines[1:])]) + "\n"


def test_a_stream_of_documents() -> None:
    text = objective("critical", 10) + "---\n" + objective("batch", -5) + "---\n" + objective("plain")
    assert parse_objectives(text, "f") == {"critical": 10, "batch": -5, "plain": 0}


def test_a_top_level_list_of_documents() -> None:
    text = indented(objective("critical", 10), "- ") + indented(objective("batch", -5), "- ")
    assert parse_objectives(text, "f") == {"critical": 10, "batch": -5}


def test_a_kubectl_list_with_items_and_server_fields() -> None:
    server_fields = "status:\n  conditions: []\n"
    item = objective("critical", 10, extra=server_fields).replace(
        "metadata:\n", "metadata:\n  namespace: default\n  uid: abc\n  resourceVersion: '42'\n")
    text = "apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: ''\nitems:\n" + indented(item, "- ")
    assert parse_objectives(text, "f") == {"critical": 10}


def test_an_inference_objective_list() -> None:
    text = ("apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceObjectiveList\nitems:\n"
            + indented(objective("a", 1), "- "))
    assert parse_objectives(text, "f") == {"a": 1}


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "---\n", "---\n---\n"])
def test_an_empty_file_defines_no_objectives(text: str) -> None:
    assert parse_objectives(text, "f") == {}


def test_empty_documents_in_a_stream_are_skipped_but_keep_their_index() -> None:
    text = "---\n# first is empty\n---\n" + objective("a", 1) + "---\n" + objective("b", "x")
    with pytest.raises(ConfigError) as err:
        parse_objectives(text, "f")
    assert err.value.field == "f[2].spec.priority"


def test_a_separator_inside_a_block_scalar_does_not_split_documents() -> None:
    text = objective("a", 1).replace("metadata:\n", "metadata:\n  annotations:\n    note: |\n      ---\n      x\n")
    assert parse_objectives(text, "f") == {"a": 1}


def test_objectives_of_another_pool_are_left_out_when_a_pool_is_named() -> None:
    text = objective("mine", 1, pool="pool") + "---\n" + objective("theirs", 2, pool="other")
    assert parse_objectives(text, "f", pool_name="pool") == {"mine": 1}
    assert parse_objectives(text, "f") == {"mine": 1, "theirs": 2}


@pytest.mark.parametrize(
    ("text", "field", "reason_part"),
    [
        pytest.param(objective("a", "high"), "f[0].spec.priority", "integer", id="string priority"),
        pytest.param(objective("a", "1.5"), "f[0].spec.priority", "integer", id="fractional priority"),
        pytest.param(objective("a", "true"), "f[0].spec.priority", "integer", id="bool priority"),
        pytest.param(objective("a", 2**63), "f[0].spec.priority", "64 bits", id="priority beyond int64"),
        pytest.param(objective("a").replace("v1alpha2", "v1"), "f[0].apiVersion", "v1alpha2", id="apiVersion"),
        pytest.param(objective("a").replace("kind: InferenceObjective", "kind: InferenceModel"), "f[0].kind",
                     "InferenceObjective", id="kind"),
        pytest.param(objective("a", extra="extra: 1\n"), "f[0].extra", "unknown field", id="unknown top-level field"),
        pytest.param(objective("a").replace("  poolRef", "  criticality: Critical\n  poolRef"),
                     "f[0].spec.criticality", "unknown field", id="unknown spec field"),
        pytest.param(objective("a").replace("    name: pool", "    name: pool\n    port: 1"),
                     "f[0].spec.poolRef.port", "unknown field", id="unknown poolRef field"),
        pytest.param(objective("a").replace("  name: a\n", "  nmae: a\n"), "f[0].metadata.nmae", "unknown field",
                     id="misspelt metadata field"),
        pytest.param(objective("a").replace("metadata:\n  name: a\n", "metadata: {}\n"), "f[0].metadata.name",
                     "required", id="missing name"),
        pytest.param(objective("Not_A_Name"), "f[0].metadata.name", "DNS subdomain", id="invalid name"),
        pytest.param(objective("a").replace("  poolRef:\n    name: pool\n", "  priority: 1\n"),
                     "f[0].spec.poolRef", "required", id="missing poolRef"),
        pytest.param(objective("a").replace("    name: pool", "    name: ''"), "f[0].spec.poolRef.name", "required",
                     id="empty pool name"),
        pytest.param(objective("a").replace("spec:\n  poolRef:\n    name: pool\n", ""), "f[0].spec", "required",
                     id="missing spec"),
        pytest.param("- 1\n", "f[0][0]", "InferenceObjective", id="list item not a mapping"),
        pytest.param("apiVersion: v1\nkind: List\nitems: 3\n", "f[0].items", "list", id="items not a list"),
        pytest.param("apiVersion: v2\nkind: List\nitems: []\n", "f[0].apiVersion", "'v1'", id="List apiVersion"),
        pytest.param(objective("a") + "---\n" + objective("a", 3), "f[1].metadata.name", "first at f[0]",
                     id="duplicate name across documents"),
        pytest.param(indented(objective("b"), "- ") + indented(objective("b"), "- "), "f[0][1].metadata.name",
                     "duplicate", id="duplicate name in a list"),
        pytest.param("a: [\n", "f[0]", "not valid YAML", id="broken YAML"),
    ],
)
def test_errors_name_the_document_and_field(text: str, field: str, reason_part: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_objectives(text, "f")
    assert err.value.field == field
    assert reason_part in str(err.value)


def test_an_alias_bomb_is_refused_per_document() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8))
    with pytest.raises(ConfigError) as err:
        parse_objectives(objective("a") + "---\n" + bomb, "f")
    assert err.value.field == "f[1]"
    assert "refused" in str(err.value)


def test_the_store_gives_zero_for_unknown_or_missing_objectives() -> None:
    store = ObjectiveStore({"critical": 10, "batch": -1})
    assert (store.priority("critical"), store.priority("batch")) == (10, -1)
    assert (store.priority("nope"), store.priority(None), store.priority("")) == (0, 0, 0)
    assert len(store) == 2


def test_the_store_is_replaced_whole_and_snapshots_are_copies() -> None:
    store = ObjectiveStore({"a": 1})
    snapshot = store.snapshot()
    store.replace({"b": 2})
    assert (store.priority("a"), store.priority("b"), len(store)) == (0, 2, 1)
    assert snapshot == {"a": 1}
    snapshot["c"] = 3
    assert store.priority("c") == 0


# The watcher


def write(path: Path, text: str) -> None:
    """Replace the file by write-then-rename, as an operator should."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_load_applies_the_file_and_fails_on_a_missing_or_invalid_one(tmp_path: Path) -> None:
    path = tmp_path / "objectives.yaml"
    store = ObjectiveStore()
    watcher = ObjectivesFileWatcher(path, store)
    with pytest.raises(ConfigError, match="--objectives-file"):
        watcher.load()
    write(path, objective("a", "high"))
    with pytest.raises(ConfigError) as err:
        watcher.load()
    assert err.value.field == f"{path}[0].spec.priority"
    write(path, objective("a", 4))
    watcher.load()
    assert store.snapshot() == {"a": 4}


async def test_watcher_applies_a_settled_change_and_survives_a_broken_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "objectives.yaml"
    write(path, objective("a", 1))
    store = ObjectiveStore()
    watcher = ObjectivesFileWatcher(path, store)
    watcher.load()
    assert await watcher.poll() is False  # unchanged

    write(path, objective("a", 1) + "---\n" + objective("b", 7))
    assert [await watcher.poll(), await watcher.poll()] == [False, True]  # applied once seen settled
    assert store.snapshot() == {"a": 1, "b": 7}

    write(path, objective("a", 1) + "---\n" + objective("b", "urgent"))
    with caplog.at_level(logging.ERROR, logger="epp.flowcontrol.objectives"):
        assert [await watcher.poll() for _ in range(3)] == [False, False, False]
    assert store.snapshot() == {"a": 1, "b": 7}  # the last good objectives stay
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "[1].spec.priority" in errors[0] and "keeping 2 objectives" in errors[0]

    write(path, objective("c", 3))
    assert [await watcher.poll(), await watcher.poll()] == [False, True]  # a fixed file is picked up
    assert store.snapshot() == {"c": 3}


async def test_watcher_keeps_the_objectives_when_the_file_disappears(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "objectives.yaml"
    write(path, objective("a", 1))
    store = ObjectiveStore()
    watcher = ObjectivesFileWatcher(path, store)
    watcher.load()
    path.unlink()
    with caplog.at_level(logging.ERROR, logger="epp.flowcontrol.objectives"):
        assert [await watcher.poll() for _ in range(3)] == [False, False, False]
    assert store.snapshot() == {"a": 1}
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


async def test_watcher_ignores_a_touch_and_an_identical_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "objectives.yaml"
    write(path, objective("a", 1))
    store = ObjectiveStore()
    watcher = ObjectivesFileWatcher(path, store)
    watcher.load()
    store.replace({})  # so that a re-apply would show
    os.utime(path, ns=(1, 1))
    write(path, objective("a", 1))
    assert [await watcher.poll() for _ in range(3)] == [False, False, False]
    assert store.snapshot() == {}
