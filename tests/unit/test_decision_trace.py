"""``DecisionTrace`` and the bounded ``DecisionLog`` behind the debug endpoint."""

from __future__ import annotations

import logging

import pytest

from epp.scheduling.trace import DecisionLog, DecisionTrace


def trace(request_id: str) -> DecisionTrace:
    return DecisionTrace(request_id, "m", ["a", "b"])


def test_the_log_keeps_the_last_capacity_decisions_evicting_the_oldest() -> None:
    log = DecisionLog(capacity=3)
    for i in range(5):
        log.record(trace(f"r{i}"))
    assert log.get("r0") is None and log.get("r1") is None
    assert [t.request_id for t in log.recent(10)] == ["r4", "r3", "r2"]
    assert [t.request_id for t in log.recent(2)] == ["r4", "r3"]


def test_a_recorded_decision_is_found_by_request_id() -> None:
    log = DecisionLog(capacity=2)
    t = trace("abc")
    log.record(t)
    assert log.get("abc") is t
    assert log.get("missing") is None


def test_a_zero_capacity_log_keeps_nothing_and_is_disabled() -> None:
    log = DecisionLog(capacity=0)
    log.record(trace("r"))
    assert log.get("r") is None and log.recent(5) == []
    assert not log.enabled


def test_debug_logging_enables_tracing_even_without_capacity(caplog: pytest.LogCaptureFixture) -> None:
    log = DecisionLog(capacity=0)
    with caplog.at_level(logging.DEBUG, logger="epp.decisions"):
        assert log.enabled
        log.record(trace("r9"))
    assert any("r9" in r.getMessage() for r in caplog.records)


def test_totals_are_weighted_sums_per_profile() -> None:
    t = trace("r")
    t.scored("p", "s1/x", 2.0, ["a", "b"], [0.5, 1.0])
    t.scored("p", "s2/y", 1.0, ["a"], [1.0])
    t.filtered("p", "f/z", ["a", "b"])
    t.picked("p", ["b"])
    t.destination = ["b"]
    out = t.as_dict()
    assert out["profiles"]["p"]["scorers"] == [
        {"plugin": "s1/x", "weight": 2.0, "scores": {"a": 0.5, "b": 1.0}},
        {"plugin": "s2/y", "weight": 1.0, "scores": {"a": 1.0}}]
    assert out["profiles"]["p"]["filters"] == [{"plugin": "f/z", "kept": ["a", "b"]}]
    assert out["profiles"]["p"]["totals"] == {"a": 2.0, "b": 2.0}
    assert out["profiles"]["p"]["picked"] == ["b"]
    assert out["destination"] == ["b"]
