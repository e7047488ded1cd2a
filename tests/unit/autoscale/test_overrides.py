"""Per-model threshold overrides: strict parsing with errors naming the field, and reloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from epp.autoscale.analyzer import Thresholds
from epp.autoscale.overrides import OverridesFile, parse_overrides
from epp.errors import ConfigError

GOOD = """\
default:
  queueLengthThreshold: 6
models:
- modelID: llama
  kvCacheThreshold: 0.7
- modelID: qwen
"""


def test_entries_are_partial_merges_onto_default() -> None:
    o = parse_overrides(GOOD)
    assert o.default == Thresholds(queue_length_threshold=6)
    assert o.for_model("llama") == Thresholds(kv_cache_threshold=0.7, queue_length_threshold=6)
    assert o.for_model("qwen") == o.default
    assert o.for_model("unlisted") == o.default


def test_empty_file_means_wva_defaults() -> None:
    assert parse_overrides("").for_model("x") == Thresholds()
    assert parse_overrides("models: []\n").for_model("x") == Thresholds()


@pytest.mark.parametrize(("text", "field", "words"), [
    ("defaults: {}\n", "defaults", "unknown field"),
    ("- 1\n", "--overrides", "expected a mapping"),
    ("default: {kvCacheThresold: 0.5}\n", "default.kvCacheThresold", "unknown parameter"),
    ("default: {kvCacheThreshold: 1.5}\n", "default.kvCacheThreshold", "between 0 and 1"),
    ("default: {queueSpareTrigger: -1}\n", "default.queueSpareTrigger", ">= 0"),
    ("default: {queueLengthThreshold: yes}\n", "default.queueLengthThreshold", "expected a number"),
    ("models: {modelID: a}\n", "models", "expected a list"),
    ("models: [3]\n", "models[0]", "expected a mapping"),
    ("models: [{kvCacheThreshold: 0.5}]\n", "models[0].modelID", "is required"),
    ("models: [{modelID: a}, {modelID: b, kvSpareTrigger: 0.9}]\n", "models[1].kvSpareTrigger",
     "must not exceed kvCacheThreshold"),
    ("models: [{modelID: a}, {modelID: a}]\n", "models[1].modelID", "duplicate"),
    ("models: [{modelID: a, queueLengthThreshold: .nan}]\n", "models[0].queueLengthThreshold", ""),
    ("default: [unclosed\n", "--overrides", "not valid YAML"),
])
def test_errors_name_the_field(text: str, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_overrides(text)
    assert info.value.field == field
    assert words in str(info.value)


def write(path: Path, text: str, mtime: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime * 10**9, mtime * 10**9))


async def settle(overrides: OverridesFile) -> bool:
    """A change applies on the second look at an unchanged file (FileWatcher's rule)."""
    first = await overrides.poll()
    second = await overrides.poll()
    return first or second


async def test_the_file_reloads_and_a_bad_change_keeps_the_last_good(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "overrides.yaml"
    write(path, GOOD, 1000)
    overrides = OverridesFile(path)
    overrides.load()
    assert overrides.for_model("llama").kv_cache_threshold == 0.7

    write(path, "models:\n- modelID: llama\n  kvCacheThreshold: 0.6\n", 2000)
    assert await settle(overrides)
    assert overrides.for_model("llama").kv_cache_threshold == 0.6
    assert overrides.for_model("qwen") == Thresholds()

    write(path, "models:\n- modelID: llama\n  kvCacheThreshold: 2\n", 3000)
    assert not await settle(overrides)
    assert overrides.for_model("llama").kv_cache_threshold == 0.6
    assert any("models[0].kvCacheThreshold" in r.getMessage() and "keeping" in r.getMessage()
               for r in caplog.records)


def test_a_missing_or_invalid_file_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        OverridesFile(tmp_path / "absent.yaml").load()
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: {kvSpareTrigger: 0.95}\n")
    with pytest.raises(ConfigError, match="default.kvSpareTrigger"):
        OverridesFile(bad).load()


def test_without_a_file_every_model_has_defaults() -> None:
    overrides = OverridesFile(None)
    overrides.load()
    assert overrides.for_model("any") == Thresholds()
