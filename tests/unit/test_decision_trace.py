"""``DecisionTrace`` and the bounded ``DecisionLog`` behind the debug endpoint."""

from __future__ import annotations

import gc
import logging
import tracemalloc

import pytest

from epp.scheduling.trace import MAX_ID_LENGTH, MAX_MODEL_LENGTH, DecisionLog, DecisionTrace, trace_key


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


def test_a_second_request_with_the_same_id_does_not_erase_the_first_trace() -> None:
    log = DecisionLog(capacity=8)
    first, second = trace("dup"), trace("dup")
    log.record(first)
    log.record(trace("other"))
    log.record(second)
    assert log.get("dup") is second  # the newest, as before
    assert log.get_all("dup") == [second, first]
    assert [t.request_id for t in log.recent(10)] == ["dup", "other", "dup"]


def test_traces_sharing_an_id_leave_in_record_order_like_any_other() -> None:
    log = DecisionLog(capacity=3)
    first = trace("dup")
    log.record(first)
    log.record(trace("a"))
    second = trace("dup")
    log.record(second)
    log.record(trace("b"))  # evicts the oldest trace: the first "dup", not the second
    assert log.get_all("dup") == [second]
    log.record(trace("c"))
    log.record(trace("d"))
    assert log.get("dup") is None and log.get_all("dup") == []
    assert len(log) == 3


def test_an_overlong_request_id_is_kept_bounded_and_still_found_by_the_full_id() -> None:
    log = DecisionLog(capacity=4)
    long_id = "r" * 100_000
    near_twin = "r" * 99_999 + "s"  # same first characters, different id
    log.record(trace(long_id))
    log.record(trace(near_twin))
    found = log.get(long_id)
    assert found is not None and len(found.request_id) <= MAX_ID_LENGTH
    assert found.request_id == trace_key(long_id) != trace_key(near_twin)
    assert log.get_all(long_id) == [found]
    assert log.get(near_twin) is not found


def test_an_overlong_model_name_is_cut_in_the_trace() -> None:
    t = DecisionTrace("r", "m" * 200_000, ["a"])
    assert len(t.model) == MAX_MODEL_LENGTH and t.as_dict()["model"].endswith("...")


def test_a_full_log_holds_bounded_memory_whatever_ids_and_models_clients_send() -> None:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        log = DecisionLog(capacity=256)
        for i in range(600):
            log.record(DecisionTrace(f"{i}-" + "\U0001f600" * 50_000, "\U0001f600" * 50_000, ["a", "b", "c"]))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(log) == 256
    assert held < 1_000_000, f"{held} bytes held by 256 traces"
