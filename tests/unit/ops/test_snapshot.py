"""``epp snapshot``: typed readings, parallel collectors with timeouts, no silent partial success, output formats."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from epp.ops.cli import add_parser
from epp.ops.snapshot import (
    AdminClient,
    CollectError,
    Collector,
    Reading,
    Subtype,
    admin_collectors,
    collect,
    config_subtypes,
    flatten,
    picker_versions,
    pool_file_collectors,
    reading,
    render,
    take_snapshot,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_readings_carry_their_type() -> None:
    assert reading(3) == Reading(3, "int")
    assert reading(0.5, "ratio") == Reading(0.5, "float", "ratio")
    assert reading(True) == Reading(True, "bool")
    assert reading(None) == Reading(None, "null")
    assert reading("x") == Reading("x", "string")
    assert reading(float("nan")) == Reading("nan", "string")  # not JSON as a number; kept visible


def test_flatten_names_nested_values_by_path() -> None:
    flat = flatten({"a": {"b": 1, "c": [True, {"d": "x"}]}, "ageSeconds": 2.5}, units={"ageSeconds": "seconds"})
    assert flat == {"a.b": Reading(1, "int"), "a.c[0]": Reading(True, "bool"), "a.c[1].d": Reading("x", "string"),
                    "ageSeconds": Reading(2.5, "float", "seconds")}


class StepClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


async def test_every_collector_runs_and_each_failure_is_recorded_not_raised() -> None:
    never = asyncio.Event()

    async def ok() -> list[Subtype]:
        return [Subtype("s", {"k": reading(1)})]

    async def refused() -> list[Subtype]:
        raise CollectError("GET /x: 404 not found")

    async def hangs() -> list[Subtype]:
        await never.wait()
        return []

    async def buggy() -> list[Subtype]:
        raise KeyError("field")

    collectors = [Collector("A", "a", ok), Collector("B", "b", refused), Collector("C", "c", hangs),
                  Collector("D", "d", buggy)]
    measurements = await collect(collectors, timeout=0.01, clock=StepClock())
    assert [(m.type, m.ok, m.error) for m in measurements] == [
        ("A", True, None), ("B", False, "GET /x: 404 not found"), ("C", False, "timed out after 0.01s"),
        ("D", False, "KeyError: 'field'")]
    assert measurements[0].subtypes[0].data == {"k": Reading(1, "int")}
    assert all(m.duration_seconds > 0 for m in measurements)


async def test_document_shape_and_partial_flag() -> None:
    async def ok() -> list[Subtype]:
        return [Subtype("picker", {"build_ref": reading("epp-python-0.1.0")})]

    async def fails() -> list[Subtype]:
        raise CollectError("GET /debug/config: 404 not found (this picker does not serve it)")

    snapshot = await take_snapshot("http://h:9090", [Collector("Versions", "v", ok), Collector("Config", "c", fails)],
                                   now=lambda: NOW, host="node-1")
    doc = yaml.safe_load(render(snapshot, "yaml"))
    assert doc["apiVersion"] == "epp.dev/v1alpha1" and doc["kind"] == "Snapshot"
    assert doc["metadata"]["snapshot-timestamp"] == "2026-01-02T03:04:05Z"
    assert (doc["metadata"]["host"], doc["metadata"]["source"]) == ("node-1", "http://h:9090")
    assert doc["partial"] is True
    assert doc["measurements"][0]["subtypes"] == [
        {"subtype": "picker", "data": {"build_ref": {"value": "epp-python-0.1.0", "type": "string"}}}]
    assert doc["measurements"][1]["status"] == "failed" and "404" in doc["measurements"][1]["error"]
    assert json.loads(render(snapshot, "json")) == doc
    table = render(snapshot, "table")
    assert "# PARTIAL: 1 collector(s) failed" in table
    assert any(line.split()[:3] == ["Versions", "picker", "build_ref"] for line in table.splitlines())
    assert any(line.split()[:3] == ["Config", "-", "FAILED"] for line in table.splitlines())


def test_config_answer_shapes() -> None:
    view = {"versions": {"epp": "0.1.0"}, "config": {"plugins": [{"type": "queue-scorer"}]}, "options": None}
    subtypes = {s.name: s.data for s in config_subtypes(json.dumps(view), "application/json")}
    assert subtypes["versions"] == {"epp": Reading("0.1.0", "string")}
    assert subtypes["config"] == {"plugins[0].type": Reading("queue-scorer", "string")}
    assert subtypes["effective"] == {"options": Reading(None, "null")}
    document = config_subtypes("kind: EndpointPickerConfig\nplugins: [{type: a}]\n", "text/yaml")
    assert [s.name for s in document] == ["effective"]
    with pytest.raises(CollectError, match="expected a mapping"):
        config_subtypes("[1, 2]", "application/json")


def test_picker_versions_from_the_info_series() -> None:
    page = '# TYPE inference_extension_info gauge\ninference_extension_info{build_ref="b",commit="c"} 1\n'
    assert picker_versions(page) == {"build_ref": Reading("b", "string"), "commit": Reading("c", "string")}
    with pytest.raises(CollectError, match="no inference_extension_info"):
        picker_versions("up 1\n")


# --- a pool file ---------------------------------------------------------------------------


async def test_pool_file_endpoints_with_labels(tmp_path: Path) -> None:
    pool = tmp_path / "pool.yaml"
    pool.write_text("endpoints:\n- 10.0.0.1:8000\n- address: 10.0.0.2\n  port: 8000\n  name: b\n  metricsPort: 9000\n"
                    "  labels: {inference.networking.k8s.io/engine-type: sglang}\n")
    snapshot = await take_snapshot("pool", pool_file_collectors(pool), now=lambda: NOW, host="h")
    assert not snapshot.partial
    endpoints = {s.name: s.data for s in snapshot.measurements[0].subtypes}
    assert endpoints["10.0.0.1:8000"]["address"] == Reading("10.0.0.1:8000", "string")
    assert endpoints["b"]["metricsAddress"] == Reading("10.0.0.2:9000", "string")
    assert endpoints["b"]["label.inference.networking.k8s.io/engine-type"] == Reading("sglang", "string")


async def test_a_bad_pool_file_is_a_failed_measurement_naming_the_field(tmp_path: Path) -> None:
    pool = tmp_path / "pool.yaml"
    pool.write_text("endpoints:\n- address: not-an-ip\n  port: 1\n")
    snapshot = await take_snapshot("pool", pool_file_collectors(pool))
    assert snapshot.partial
    assert "endpoints[0].address" in (snapshot.failed[0].error or "")
    missing = await take_snapshot("pool", pool_file_collectors(tmp_path / "nope.yaml"))
    assert "cannot read" in (missing.failed[0].error or "")


# --- the admin API (a fake one on loopback) --------------------------------------------------


ENDPOINTS = {"pool": "p", "endpoints": [{
    "name": "e1", "address": "10.0.0.1:8000", "ready": True, "labels": {"engine": "vllm"},
    "metrics": {"waitingQueueSize": 2, "kvCacheUsagePercent": 0.25, "activeModels": ["ad1"], "ageSeconds": 0.05},
    "custom": {"load": {"value": 3.5, "ageSeconds": 1.0}},
    "scrape": {"consecutiveFailures": 0, "lastError": ""}, "passiveHealth": {"ejected": False}}]}


CALLS: dict[str, int] = {}


@pytest.fixture
async def admin() -> AsyncIterator[str]:
    calls = CALLS
    calls.clear()

    async def endpoints(request: web.Request) -> web.Response:
        calls[request.path] = calls.get(request.path, 0) + 1
        if request.headers.get("Authorization") != "Bearer tok":
            return web.json_response({"code": "unauthorized"}, status=401)
        return web.json_response(ENDPOINTS)

    async def flowcontrol(_: web.Request) -> web.Response:
        return web.json_response({"enabled": True, "bands": [{"priority": 0, "queued": 1}]})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text='inference_extension_info{build_ref="x",commit="y"} 1\n')

    app = web.Application()
    app.router.add_get("/debug/endpoints", endpoints)
    app.router.add_get("/debug/flowcontrol", flowcontrol)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_admin_collectors_read_each_view_once(admin: str) -> None:
    async with AdminClient(admin, "tok") as client:
        snapshot = await take_snapshot(admin, admin_collectors(client), timeout=5.0, now=lambda: NOW, host="h")
    by_type = {m.type: m for m in snapshot.measurements}
    assert by_type["Endpoints"].subtypes[0].data["label.engine"] == Reading("vllm", "string")
    metrics = by_type["Metrics"].subtypes[0].data
    assert metrics["waitingQueueSize"] == Reading(2, "int", "requests")
    assert metrics["kvCacheUsagePercent"] == Reading(0.25, "float", "ratio")
    assert metrics["activeModels[0]"] == Reading("ad1", "string")
    assert metrics["custom.load.ageSeconds"] == Reading(1.0, "float", "seconds")
    assert by_type["FlowControl"].subtypes[0].data["bands[0].queued"] == Reading(1, "int")
    assert by_type["Versions"].subtypes[0].data == {"build_ref": Reading("x", "string"),
                                                    "commit": Reading("y", "string")}
    # No /debug/config on this picker: recorded as a failed measurement, not a crash.
    assert by_type["Config"].error == "GET /debug/config: 404 not found (this picker does not serve it)"
    assert [m.type for m in snapshot.failed] == ["Config"]
    # Endpoints and Metrics share one read, so both describe the same moment.
    assert CALLS == {"/debug/endpoints": 1}


async def test_admin_without_the_token_says_how_to_give_it(admin: str) -> None:
    async with AdminClient(admin) as client:
        snapshot = await take_snapshot(admin, admin_collectors(client), timeout=5.0)
    assert {m.type: m.error for m in snapshot.failed}["Endpoints"] == (
        "GET /debug/endpoints: 401 unauthorized (give the admin token with --token-file)")


async def test_an_unreachable_picker_fails_every_admin_measurement() -> None:
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    async with AdminClient("http://127.0.0.1:1") as client:
        snapshot = await take_snapshot("x", admin_collectors(client), timeout=5.0)
    assert len(snapshot.failed) == len(snapshot.measurements) == 5
    assert all("ClientConnectorError" in (m.error or "") for m in snapshot.failed)


# --- the command ---------------------------------------------------------------------------


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_command_pool_file_to_json_file(tmp_path: Path) -> None:
    pool = tmp_path / "pool.yaml"
    pool.write_text("endpoints: [10.0.0.1:8000]\n")
    out = tmp_path / "snap.json"
    assert run(["snapshot", "--pool-file", str(pool), "--format", "json", "--output", str(out)]) == 0
    doc: dict[str, Any] = json.loads(out.read_text())
    assert doc["partial"] is False
    assert doc["measurements"][0]["subtypes"][0]["subtype"] == "10.0.0.1:8000"


def test_command_partial_exits_1_and_allow_partial_exits_0_saying_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    assert run(["snapshot", "--pool-file", str(missing)]) == 1
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["partial"] is True
    assert "incomplete, 1 collector(s) failed: Endpoints: cannot read" in captured.err
    assert run(["snapshot", "--pool-file", str(missing), "--allow-partial"]) == 0
    assert "PARTIAL snapshot (--allow-partial)" in capsys.readouterr().err


def test_command_refuses_an_empty_token_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text("\n")
    assert run(["snapshot", "--token-file", str(token)]) == 2
    assert "is empty" in capsys.readouterr().err


def test_admin_and_pool_file_are_exclusive() -> None:
    with pytest.raises(SystemExit):
        run(["snapshot", "--admin", "http://x", "--pool-file", "p"])
