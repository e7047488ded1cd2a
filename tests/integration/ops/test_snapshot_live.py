"""``epp snapshot`` of a running stack: an in-process picker scraping simulators, read through its admin API."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from epp import __version__
from epp.ops.cli import add_parser
from epp.ops.snapshot import AdminClient, admin_collectors, take_snapshot
from epp.server.app import PickerServer
from epp.sim import SimConfig, SimServer

PickerFactory = Callable[..., Awaitable[PickerServer]]


@pytest.fixture
async def sims() -> AsyncIterator[list[SimServer]]:
    servers = [SimServer(SimConfig(port=0, time_scale=0.05, seed=i)) for i in range(2)]
    for server in servers:
        await server.start()
    yield servers
    for server in servers:
        await server.stop()


async def scraped(server: PickerServer, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(ep.metrics.update_time > 0 and ep.ready for ep in server.pool.endpoints()):
        if time.monotonic() > deadline:
            raise AssertionError("the picker never scraped its endpoints")
        await asyncio.sleep(0.02)


@pytest.fixture
async def stack(start_picker: PickerFactory, sims: list[SimServer]) -> PickerServer:
    endpoints = ",".join(f"127.0.0.1:{s.port}" for s in sims)
    server = await start_picker(endpoints=endpoints, config=None, refresh_metrics_interval=0.02, scrape_timeout=0.5)
    await scraped(server)
    return server


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def measurement(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(m for m in doc["measurements"] if m["type"] == kind)


async def test_snapshot_of_a_running_picker_records_what_it_sees(stack: PickerServer, sims: list[SimServer]) -> None:
    async with AdminClient(f"http://127.0.0.1:{stack.metrics_port}") as client:
        snapshot = await take_snapshot("test", admin_collectors(client), timeout=5.0)
    doc = json.loads(json.dumps(snapshot.as_dict()))

    assert (doc["apiVersion"], doc["kind"]) == ("epp.dev/v1alpha1", "Snapshot")
    endpoints = {s["subtype"]: s["data"] for s in measurement(doc, "Endpoints")["subtypes"]}
    assert set(endpoints) == {f"127.0.0.1:{s.port}" for s in sims}
    assert all(e["ready"] == {"value": True, "type": "bool"} for e in endpoints.values())

    metrics = {s["subtype"]: s["data"] for s in measurement(doc, "Metrics")["subtypes"]}
    for data in metrics.values():
        assert data["waitingQueueSize"] == {"value": 0, "type": "int", "unit": "requests"}
        assert data["cacheBlockSize"]["value"] == 16
        assert data["ageSeconds"]["type"] == "float" and data["ageSeconds"]["unit"] == "seconds"

    versions = {s["subtype"]: s["data"] for s in measurement(doc, "Versions")["subtypes"]}
    assert versions["picker"]["build_ref"]["value"] == f"epp-python-{__version__}"
    assert versions["cli"]["eppVersion"]["value"] == __version__
    flow = measurement(doc, "FlowControl")["subtypes"][0]["data"]
    assert flow["enabled"] == {"value": False, "type": "bool"}

    # Until the admin API serves /debug/config, that one measurement fails and says why.
    config = measurement(doc, "Config")
    if config["status"] == "failed":
        assert "404" in config["error"]
        assert doc["partial"] is True
    else:
        assert config["subtypes"]


async def test_command_exits_non_zero_on_a_partial_snapshot_unless_allowed(
        stack: PickerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "snap.yaml"
    admin = f"http://127.0.0.1:{stack.metrics_port}"
    # The command runs its own event loop: off this test's loop, as a user's shell would.
    code = await asyncio.to_thread(run, ["snapshot", "--admin", admin, "--output", str(out)])
    doc = yaml.safe_load(out.read_text())
    failed = [m["type"] for m in doc["measurements"] if m["status"] == "failed"]
    assert code == (1 if failed else 0)
    assert doc["partial"] == bool(failed)
    allowed = await asyncio.to_thread(run, ["snapshot", "--admin", admin, "--allow-partial", "--format", "table"])
    assert allowed == 0
    captured = capsys.readouterr()
    assert "127.0.0.1:" in captured.out and "TYPE" in captured.out
    if failed:
        assert "PARTIAL snapshot (--allow-partial)" in captured.err


async def test_snapshot_feeds_a_recipe(stack: PickerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = tmp_path / "snap.json"
    admin = f"http://127.0.0.1:{stack.metrics_port}"
    await asyncio.to_thread(run, ["snapshot", "--admin", admin, "--format", "json", "--output", str(snap),
                                  "--allow-partial"])
    assert await asyncio.to_thread(run, ["recipe", "--snapshot", str(snap), "--intent", "throughput"]) == 0
    out = capsys.readouterr().out
    assert "modelServer=vllm accelerator=any intent=throughput slo=off flowControl=off" in out


async def test_a_token_protected_picker_needs_the_token(start_picker: PickerFactory, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    server = await start_picker(admin_token_file=token)
    admin = f"http://127.0.0.1:{server.metrics_port}"
    assert await asyncio.to_thread(run, ["snapshot", "--admin", admin, "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert all(m["status"] == "failed" for m in doc["measurements"])
    assert "401 unauthorized (give the admin token with --token-file)" in measurement(doc, "Endpoints")["error"]
    assert await asyncio.to_thread(run, ["snapshot", "--admin", admin, "--format", "json",
                                         "--token-file", str(token), "--allow-partial"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert measurement(doc, "Endpoints")["status"] == "ok"
