"""The side-by-side benchmark harness (benchmarks/compare) on a tiny run: every installed contestant
starts, routes the whole stream and is stopped; the report files are written; a contestant
that fails makes the run fail, by name, without stopping the others."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

# The benchmarks package lives at the repository root, which is not on pytest's import path.
from benchmarks.compare import run as compare_run
from benchmarks.compare.contestants import Contestant, EnvoyRoundRobin, PeerRouter, Running, default_contestants
from benchmarks.compare.harness import RunPlan
from epp.devstack.processes import ManagedProcess, free_port
from epp.devstack.stack import Stack

pytestmark = pytest.mark.e2e

ALWAYS_THERE = ("round-robin", "picker")
# matplotlib comes with the `bench` extra, which `make test` does not install.
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


class Recording(Contestant):
    """A real contestant whose processes the test keeps, to check they were stopped."""

    def __init__(self, inner: Contestant) -> None:
        self.inner = inner
        self.name = inner.name
        self.description = inner.description
        self.started: list[ManagedProcess] = []

    def missing(self) -> str | None:
        return self.inner.missing()

    def start(self, stack: Stack) -> Running:
        running = self.inner.start(stack)
        self.started += running.processes.values()
        return running


class DeadEndpoint(Contestant):
    """Starts fine but sends every request to a port nobody listens on."""

    name = "dead-endpoint"
    description = "injected: every request fails"

    def start(self, stack: Stack) -> Running:
        return Running(f"http://127.0.0.1:{free_port()}")


class CannotStart(Contestant):
    name = "cannot-start"
    description = "injected: start raises"

    def start(self, stack: Stack) -> Running:
        raise RuntimeError("router binary crashed at start-up")


def _plan() -> RunPlan:
    return RunPlan(replicas=2, rate=8.0, seconds=1.0, seed=3, drain=15.0, idle=0.2)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[Recording], Path]:
    out = tmp_path_factory.mktemp("compare")
    contestants = [Recording(c) for c in default_contestants()]
    report = compare_run.compare([*contestants, DeadEndpoint()], ["shared-prefix"], _plan(), out,
                                 plots=HAVE_MATPLOTLIB)
    return report, contestants, out


def _row(report: dict[str, Any], name: str) -> dict[str, Any]:
    rows = [r for r in report["workloads"]["shared-prefix"]["rows"] if r["contestant"] == name]
    assert len(rows) == 1, f"one row per contestant, got {rows}"
    return rows[0]


@pytest.mark.parametrize("name", [c.name for c in default_contestants()])
def test_each_installed_contestant_routes_the_whole_stream_and_is_stopped(
        tiny_run: tuple[dict[str, Any], list[Recording], Path], name: str) -> None:
    report, contestants, _ = tiny_run
    row = _row(report, name)
    if row["status"] == "missing":
        assert name not in ALWAYS_THERE, f"{name} must always be available: {row['reason']}"
        pytest.skip(f"{name} not available here: {row['reason']}")
    assert row["status"] == "ok", row.get("reason")
    assert row["requests"] > 0 and row["errors"] == 0
    assert sum(row["requests_per_replica"]) == row["requests"], "the simulators saw every request once"
    assert row["ttft_ms"]["p90"] is not None and row["output_tokens_per_s"] > 0
    assert 0.0 <= row["prefix_hit_rate"] <= 1.0
    assert row["router_cpu_s"] > 0, "the router's processes were measured"
    recording = next(c for c in contestants if c.name == name)
    assert recording.started, "the contestant started processes"
    assert all(p.poll() is not None for p in recording.started), "every process is stopped after its run"


def test_every_contestant_gets_the_same_request_stream(tiny_run: tuple[dict[str, Any], list[Recording], Path]) -> None:
    report, _, _ = tiny_run
    counts = {r["requests"] for r in report["workloads"]["shared-prefix"]["rows"] if r["status"] == "ok"}
    assert len(counts) == 1, counts


def test_report_files_are_written(tiny_run: tuple[dict[str, Any], list[Recording], Path]) -> None:
    report, _, out = tiny_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["workloads"].keys() == report["workloads"].keys()
    table = (out / "results.md").read_text()
    assert "| picker |" in table and "| round-robin |" in table
    if not HAVE_MATPLOTLIB:
        pytest.skip("matplotlib not installed (pip install -e '.[bench]'): JSON and Markdown checked, plots not")
    for png in ("ttft_p90.png", "throughput.png", "router_cpu.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG"), png


def test_a_contestant_whose_requests_all_fail_is_a_failure(
        tiny_run: tuple[dict[str, Any], list[Recording], Path]) -> None:
    report, _, out = tiny_run
    row = _row(report, "dead-endpoint")
    assert row["status"] == "failed" and "requests failed" in row["reason"]
    assert any(f.startswith("dead-endpoint on shared-prefix") for f in report["failures"])
    assert "dead-endpoint **FAILED**" in (out / "results.md").read_text()


def test_a_missing_peer_says_how_to_install_it(tmp_path: Path) -> None:
    peer = PeerRouter("sglang-router", "cache_aware", venv_dir=tmp_path / "no-venv")
    reason = peer.missing()
    assert reason is not None and "python -m benchmarks.compare.setup" in reason


def test_the_command_exits_non_zero_and_names_a_contestant_that_cannot_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(compare_run, "default_contestants", lambda: [EnvoyRoundRobin(), CannotStart()])
    code = compare_run.main(["--workloads", "unique", "--replicas", "1", "--rate", "4", "--seconds", "1",
                             "--drain", "15", "--out", str(tmp_path), "--no-plots"])
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot-start on unique" in err and "router binary crashed at start-up" in err
    report = json.loads((tmp_path / "results.json").read_text())
    rows = {r["contestant"]: r["status"] for r in report["workloads"]["unique"]["rows"]}
    assert rows == {"round-robin": "ok", "cannot-start": "failed"}, "the others still ran"
