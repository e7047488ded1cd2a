"""``json-file-source`` and ``json-metric``: per-endpoint numbers from a local JSON file."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from epp.config.loader import load_config
from epp.datalayer import collector as collector_module
from epp.datalayer.collector import Collector, _State
from epp.datalayer.endpoint import CustomValue, Endpoint
from epp.datalayer.pool import EndpointPool
from epp.errors import ConfigError
from epp.framework.params import decode_params
from epp.framework.plugin import Handle
from epp.plugins import default_registry
from epp.plugins.datalayer import file_source
from epp.plugins.datalayer.file_source import (
    FileSourceError,
    JsonFileSource,
    JsonFileSourceParams,
    JsonMetricExtractor,
    JsonMetricParams,
    JsonValueError,
    JsonValues,
)
from epp.testing.clock import TickingClock


def new_handle() -> Handle:
    return Handle(pool=EndpointPool(), rng=random.Random(1))


def source(**raw: Any) -> JsonFileSource:
    return JsonFileSource("files", decode_params(JsonFileSourceParams, raw, "parameters"), new_handle())


def metric(**raw: Any) -> JsonMetricExtractor:
    return JsonMetricExtractor("jm", decode_params(JsonMetricParams, raw, "parameters"), new_handle(),
                               clock=TickingClock())


def replace_file(path: Path, document: Any) -> None:
    """Write as the docstring tells writers to: a temporary file renamed over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(document if isinstance(document, bytes) else orjson.dumps(document))
    os.replace(tmp, path)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths the source actually opened and parsed, in order."""
    seen: list[str] = []
    real = file_source._load

    def counting(path: str, max_bytes: int) -> Any:
        seen.append(path)
        return real(path, max_bytes)

    monkeypatch.setattr(file_source, "_load", counting)
    return seen


# --- values per endpoint -----------------------------------------------------------------


async def test_a_shared_file_gives_each_endpoint_its_entry_by_name_or_address(
        tmp_path: Path, make_endpoint: Callable[..., Endpoint]) -> None:
    path = tmp_path / "values.json"
    replace_file(path, {"a": {"backlog": 3, "temp": 61.5}, "10.0.0.2:8000": {"backlog": 0}})
    plugin = source(path=str(path))
    by_name = make_endpoint("a", address="10.0.0.1")
    by_address = make_endpoint("b", address="10.0.0.2")
    assert await plugin.collect(by_name) == {"backlog": 3, "temp": 61.5}
    assert await plugin.collect(by_address) == {"backlog": 0}
    assert isinstance(await plugin.collect(by_name), JsonValues)


async def test_an_endpoint_without_an_entry_fails_its_collect(
        tmp_path: Path, make_endpoint: Callable[..., Endpoint]) -> None:
    path = tmp_path / "values.json"
    replace_file(path, {"a": {"backlog": 3}, "c": 7})
    plugin = source(path=str(path))
    with pytest.raises(FileSourceError, match=r"no entry for endpoint 'b' or '10\.0\.0\.1:8000'"):
        await plugin.collect(make_endpoint("b"))
    with pytest.raises(FileSourceError, match="entry of 'c' is not an object"):
        await plugin.collect(make_endpoint("c"))


async def test_a_path_template_reads_one_file_per_endpoint(
        tmp_path: Path, make_endpoint: Callable[..., Endpoint]) -> None:
    replace_file(tmp_path / "a-8000.json", {"backlog": 1})
    replace_file(tmp_path / "b-9000.json", {"backlog": 2})
    plugin = source(pathTemplate=str(tmp_path / "{name}-{port}.json"))
    assert await plugin.collect(make_endpoint("a", port=8000)) == {"backlog": 1}
    assert await plugin.collect(make_endpoint("b", port=9000)) == {"backlog": 2}


async def test_a_template_refuses_an_endpoint_name_that_would_leave_the_directory(
        tmp_path: Path, make_endpoint: Callable[..., Endpoint]) -> None:
    plugin = source(pathTemplate=str(tmp_path / "{name}.json"))
    for name in ("../etc/passwd", ".."):
        with pytest.raises(FileSourceError, match="cannot be part of a file name"):
            await plugin.collect(make_endpoint(name))


# --- re-reading only on change -------------------------------------------------------------


async def test_a_replaced_file_is_picked_up(tmp_path: Path, make_endpoint: Callable[..., Endpoint]) -> None:
    path = tmp_path / "values.json"
    replace_file(path, {"a": {"backlog": 3}})
    plugin = source(path=str(path))
    ep = make_endpoint("a")
    assert await plugin.collect(ep) == {"backlog": 3}
    replace_file(path, {"a": {"backlog": 4}})  # same size: the new inode is what tells them apart
    assert await plugin.collect(ep) == {"backlog": 4}


async def test_an_unchanged_file_is_read_once_for_every_endpoint_and_tick(
        tmp_path: Path, make_endpoint: Callable[..., Endpoint], reads: list[str]) -> None:
    path = tmp_path / "values.json"
    replace_file(path, {name: {"backlog": i} for i, name in enumerate("abc")})
    plugin = source(path=str(path))
    endpoints = [make_endpoint(name) for name in "abc"]
    for _ in range(5):  # five ticks, every endpoint at once as the collector does
        results = await asyncio.gather(*(plugin.collect(ep) for ep in endpoints))
        assert [r["backlog"] for r in results] == [0, 1, 2]
    assert reads == [str(path)]
    replace_file(path, {name: {"backlog": 10 + i} for i, name in enumerate("abc")})
    results = await asyncio.gather(*(plugin.collect(ep) for ep in endpoints))
    assert [r["backlog"] for r in results] == [10, 11, 12]
    assert reads == [str(path)] * 2


async def test_a_rewrite_keeping_inode_size_and_mtime_is_not_seen(
        tmp_path: Path, make_endpoint: Callable[..., Endpoint]) -> None:
    # Evidence the stat alone decides: contents changed in place behind an identical stamp stay unread.
    path = tmp_path / "values.json"
    path.write_bytes(b'{"a": {"backlog": 3}}')
    plugin = source(path=str(path))
    ep = make_endpoint("a")
    assert await plugin.collect(ep) == {"backlog": 3}
    st = path.stat()
    path.write_bytes(b'{"a": {"backlog": 5}}')
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert await plugin.collect(ep) == {"backlog": 3}


# --- file errors -------------------------------------------------------------------------


async def test_a_malformed_file_is_an_error_parsed_once_per_change(
        tmp_path: Path, make_endpoint: Callable[..., Endpoint], reads: list[str]) -> None:
    path = tmp_path / "values.json"
    replace_file(path, b'{"a": {"backlog": 3},')
    plugin = source(path=str(path))
    for _ in range(3):
        with pytest.raises(FileSourceError, match="malformed JSON"):
            await plugin.collect(make_endpoint("a"))
    assert len(reads) == 1
    replace_file(path, {"a": {"backlog": 3}})
    assert await plugin.collect(make_endpoint("a")) == {"backlog": 3}


@pytest.mark.parametrize(("payload", "reason"), [
    (b'{"a": {"backlog": NaN}}', "malformed JSON"),
    (b'{"a": {"backlog": 1e400}}', "malformed JSON"),
    (b"[1, 2]", "expected a JSON object, got list"),
])
async def test_json_that_is_not_an_object_of_finite_numbers_fails_the_file(
        tmp_path: Path, make_endpoint: Callable[..., Endpoint], payload: bytes, reason: str) -> None:
    path = tmp_path / "values.json"
    replace_file(path, payload)
    with pytest.raises(FileSourceError, match=reason):
        await source(path=str(path)).collect(make_endpoint("a"))


async def test_an_oversized_file_is_refused_without_reading_it(
        tmp_path: Path, make_endpoint: Callable[..., Endpoint], reads: list[str]) -> None:
    path = tmp_path / "values.json"
    replace_file(path, {"a": {"backlog": 3, "padding": "x" * 100}})
    plugin = source(path=str(path), maxBytes=64)
    with pytest.raises(FileSourceError, match=r"larger than maxBytes \(64 bytes\); not read"):
        await plugin.collect(make_endpoint("a"))
    assert reads == []


async def test_a_missing_file_is_an_error_naming_it(tmp_path: Path, make_endpoint: Callable[..., Endpoint]) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(FileSourceError, match=f"{path}: No such file or directory"):
        await source(path=str(path)).collect(make_endpoint("a"))


async def test_a_file_older_than_max_age_is_an_error(tmp_path: Path, make_endpoint: Callable[..., Endpoint]) -> None:
    path = tmp_path / "values.json"
    replace_file(path, {"a": {"backlog": 3}})
    plugin = source(path=str(path), maxAge="10s")
    assert await plugin.collect(make_endpoint("a")) == {"backlog": 3}
    an_hour_ago = path.stat().st_mtime - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    with pytest.raises(FileSourceError, match=r"not modified for 36\d\d\.\ds \(maxAge 10s\)"):
        await plugin.collect(make_endpoint("a"))


@pytest.mark.parametrize(("raw", "field", "reason_part"), [
    pytest.param({}, "parameters.path", "exactly one of path and pathTemplate", id="neither"),
    pytest.param({"path": "/a", "pathTemplate": "/b/{name}"}, "parameters.path", "exactly one", id="both"),
    pytest.param({"pathTemplate": "/b/x.json"}, "parameters.pathTemplate", "use path for one file",
                 id="template without placeholder"),
    pytest.param({"pathTemplate": "/b/{name.__class__}"}, "parameters.pathTemplate", "only {name}",
                 id="unknown placeholder"),
    pytest.param({"path": "/a", "maxBytes": 0}, "parameters.maxBytes", "between 1 and", id="zero max bytes"),
    pytest.param({"path": "/a", "maxAge": "0s"}, "parameters.maxAge", "greater than 0", id="zero max age"),
])
def test_bad_source_parameters_name_their_field(raw: dict[str, Any], field: str, reason_part: str) -> None:
    with pytest.raises(ConfigError) as err:
        decode_params(JsonFileSourceParams, raw, "parameters")
    assert err.value.field == field
    assert reason_part in err.value.reason


# --- json-metric -------------------------------------------------------------------------


def test_json_metric_copies_the_field_with_its_update_time(make_endpoint: Callable[..., Endpoint]) -> None:
    ep = make_endpoint("a")
    metric(key="backlog").extract(JsonValues(backlog=3, temp=61.5), ep)
    metric(key="temp", customKey="gpu_temp").extract(JsonValues(backlog=3, temp=61.5), ep)
    assert ep.custom == {"backlog": CustomValue(3.0, 100.0), "gpu_temp": CustomValue(61.5, 100.0)}


@pytest.mark.parametrize(("values", "reason"), [
    ({"other": 1}, "no field 'backlog'"),
    ({"backlog": "7"}, "field 'backlog' is '7', not a finite number"),
    ({"backlog": True}, "is True, not a finite number"),
    ({"backlog": None}, "is None, not a finite number"),
    ({"backlog": {"v": 1}}, "not a finite number"),
    ({"backlog": float("nan")}, "is nan, not a finite number"),
])
def test_a_missing_or_unusable_field_is_an_error_and_keeps_the_old_value_and_its_time(
        make_endpoint: Callable[..., Endpoint], values: dict[str, Any], reason: str) -> None:
    ep = make_endpoint("a")
    plugin = metric(key="backlog")
    plugin.extract(JsonValues(backlog=3), ep)
    with pytest.raises(JsonValueError, match=reason):
        plugin.extract(JsonValues(values), ep)
    assert ep.custom == {"backlog": CustomValue(3.0, 100.0)}


def test_json_metric_needs_a_key() -> None:
    with pytest.raises(ConfigError) as err:
        decode_params(JsonMetricParams, {"key": ""}, "parameters")
    assert (err.value.field, err.value.reason) == ("parameters.key", "must not be empty")


# --- wiring ------------------------------------------------------------------------------


def config(path: Path, source_type: str, extractor_type: str, extractor_params: str) -> str:
    source_params = f"{{path: {path}}}" if source_type == "json-file-source" else "{}"
    return f"""\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- {{name: src, type: {source_type}, parameters: {source_params}}}
- {{name: ext, type: {extractor_type}, parameters: {extractor_params}}}
- {{name: by-backlog, type: metric-scorer, parameters: {{metricName: backlog}}}}
dataLayer:
  sources:
  - pluginRef: src
    extractors: [{{pluginRef: ext}}]
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: by-backlog}}]
"""


def test_a_config_wires_json_metric_under_the_file_source(tmp_path: Path) -> None:
    loaded = load_config(config(tmp_path / "v.json", "json-file-source", "json-metric", "{key: backlog}"),
                         default_registry(), new_handle())
    (binding,) = loaded.data_bindings
    assert isinstance(binding.source, JsonFileSource)
    assert [type(e) for e in binding.extractors] == [JsonMetricExtractor]


@pytest.mark.parametrize(("source_type", "extractor_type", "extractor_params", "reads", "produces"), [
    ("json-file-source", "core-metrics-extractor", "{}", "ScrapedSeries", "JsonValues"),
    ("json-file-source", "prometheus-metric", "{metricName: backlog}", "ScrapedSeries", "JsonValues"),
    ("metrics-data-source", "json-metric", "{key: backlog}", "JsonValues", "ScrapedSeries"),
])
def test_wiring_an_extractor_to_a_source_of_another_type_fails_at_start(
        tmp_path: Path, source_type: str, extractor_type: str, extractor_params: str, reads: str,
        produces: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(config(tmp_path / "v.json", source_type, extractor_type, extractor_params),
                    default_registry(), new_handle())
    assert err.value.field.startswith("dataLayer.sources[0]")
    assert f"extractor 'ext' reads {reads}, source 'src' produces {produces}" in err.value.reason


# --- through the collector ---------------------------------------------------------------


async def test_the_collector_logs_a_bad_file_once_and_keeps_the_values_until_it_is_fixed(
        tmp_path: Path, make_endpoint: Callable[..., Endpoint], caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "values.json"
    replace_file(path, {"a": {"backlog": 3}})
    pool = EndpointPool()
    loaded = load_config(config(path, "json-file-source", "json-metric", "{key: backlog}"),
                         default_registry(), Handle(pool=pool, rng=random.Random(1)))
    collector = Collector(pool, loaded.data_bindings, unready_after=100)
    ep, state = make_endpoint("a"), _State()
    await collector._tick(ep, state)
    first = ep.custom["backlog"]
    assert first.value == 3.0

    replace_file(path, b"{not json")
    with caplog.at_level(logging.WARNING, logger=collector_module.__name__):
        for _ in range(3):
            await collector._tick(ep, state)
    failures = [r.getMessage() for r in caplog.records if "scrape failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].startswith(f"endpoint a: scrape failed: {path}: malformed JSON")
    assert state.failures == 3
    assert ep.custom["backlog"] == first  # same value, same (aging) update time

    replace_file(path, {"a": {"backlog": 4}})
    await collector._tick(ep, state)
    assert ep.custom["backlog"].value == 4.0
    assert ep.custom["backlog"].update_time >= first.update_time
    assert state.failures == 0 and state.last_error == ""
