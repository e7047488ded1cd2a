"""The workload registry: moving averages under a synthetic clock, idle decay, size bound, expiry."""

from __future__ import annotations

import json
import math

import pytest

from epp.flowcontrol.types import WorkloadStats, WorkloadStatsView
from epp.flowcontrol.workloads import WorkloadRegistry


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def arrivals(registry: WorkloadRegistry, workload_id: str, rate: float, start: float, seconds: float) -> float:
    """Steady arrivals at ``rate``/s from ``start`` for ``seconds``; returns the last arrival time."""
    count = int(seconds * rate)
    now = start
    for index in range(count):
        now = start + index / rate
        registry.record_arrival(workload_id, now)
    return now


def test_unknown_workload_reads_as_zeros() -> None:
    registry = WorkloadRegistry()
    assert registry.stats("nobody") == WorkloadStats()
    assert len(registry) == 0


def test_it_is_a_workload_stats_view() -> None:
    view: WorkloadStatsView = WorkloadRegistry()
    assert view.stats("x") == WorkloadStats()


def test_request_rate_converges_to_the_arrival_rate() -> None:
    registry = WorkloadRegistry(time_constant=60.0)
    last = arrivals(registry, "steady", rate=10.0, start=0.0, seconds=600.0)
    assert registry.stats_at("steady", last).request_rate == pytest.approx(10.0, abs=0.1)


def test_request_rate_follows_a_change_of_pace() -> None:
    registry = WorkloadRegistry(time_constant=30.0)
    last = arrivals(registry, "w", rate=20.0, start=0.0, seconds=300.0)
    assert registry.stats_at("w", last).request_rate == pytest.approx(20.0, rel=0.02)
    last = arrivals(registry, "w", rate=2.0, start=last + 0.5, seconds=300.0)
    assert registry.stats_at("w", last).request_rate == pytest.approx(2.0, rel=0.02)


def test_rate_decays_while_the_workload_is_idle() -> None:
    clock = Clock()
    registry = WorkloadRegistry(time_constant=60.0, idle_expiry=math.inf, clock=clock)
    last = arrivals(registry, "w", rate=5.0, start=0.0, seconds=600.0)
    clock.now = last
    busy = registry.stats("w").request_rate
    clock.now = last + 60.0
    assert registry.stats("w").request_rate == pytest.approx(busy / math.e)
    clock.now = last + 1_200.0
    assert registry.stats("w").request_rate < 1e-6


def test_average_wait_is_exact_for_a_constant_wait_and_converges_after_a_change() -> None:
    registry = WorkloadRegistry(time_constant=60.0)
    for step in range(100):
        registry.record_dispatch("w", 0.5, float(step))
    assert registry.stats_at("w", 100.0).average_wait == pytest.approx(0.5)
    now = 100.0
    for step in range(1_000):  # ten time constants of 2-second waits
        now = 100.0 + step
        registry.record_dispatch("w", 2.0, now)
    assert registry.stats_at("w", now).average_wait == pytest.approx(2.0, abs=0.01)


def test_dispatches_at_the_same_instant_all_count_in_the_average_wait() -> None:
    registry = WorkloadRegistry()
    for _ in range(100):
        registry.record_dispatch("w", 1.0, 5.0)
    for _ in range(100):
        registry.record_dispatch("w", 3.0, 5.0)
    assert registry.stats_at("w", 5.0).average_wait == pytest.approx(2.0)


def test_average_wait_keeps_its_value_while_idle() -> None:
    registry = WorkloadRegistry()
    registry.record_dispatch("w", 4.0, 0.0)
    assert registry.stats_at("w", 250.0).average_wait == pytest.approx(4.0)


def test_least_recently_seen_workload_is_evicted_at_the_bound() -> None:
    registry = WorkloadRegistry(max_workloads=3)
    for now, name in enumerate("abc"):
        registry.record_arrival(name, float(now))
    registry.record_dispatch("a", 0.1, 3.0)  # a seen again: b is now the oldest
    registry.record_arrival("d", 4.0)
    assert len(registry) == 3
    assert "b" not in registry
    assert {"a", "c", "d"} == {name for name in "abcd" if name in registry}
    assert registry.stats_at("b", 4.0) == WorkloadStats()


def test_many_distinct_workloads_stay_within_the_bound() -> None:
    registry = WorkloadRegistry(max_workloads=16)
    for index in range(1_000):
        registry.record_arrival(f"w{index}", float(index))
    assert len(registry) == 16
    assert all(f"w{index}" in registry for index in range(984, 1_000))


def test_expire_drops_only_workloads_idle_past_the_expiry() -> None:
    registry = WorkloadRegistry(idle_expiry=300.0)
    registry.record_arrival("old", 0.0)
    registry.record_arrival("recent", 200.0)
    registry.record_arrival("refreshed", 10.0)
    registry.record_dispatch("refreshed", 1.0, 250.0)
    assert registry.expire(350.0) == 1
    assert "old" not in registry and len(registry) == 2
    assert registry.stats_at("old", 350.0) == WorkloadStats()
    assert registry.expire(350.0) == 0
    assert registry.expire(10_000.0) == 2
    assert len(registry) == 0


def test_snapshot_is_json_ready_and_reports_each_workload() -> None:
    clock = Clock(10.0)
    registry = WorkloadRegistry(time_constant=60.0, max_workloads=8, clock=clock)
    registry.record_arrival("chat", 9.0)
    registry.record_dispatch("chat", 0.25, 10.0)
    snapshot = json.loads(json.dumps(registry.snapshot()))
    assert snapshot["count"] == 1 and snapshot["maxWorkloads"] == 8
    chat = snapshot["workloads"]["chat"]
    assert chat["arrivals"] == 1 and chat["dispatches"] == 1
    assert chat["averageWaitSeconds"] == pytest.approx(0.25)
    assert chat["requestRate"] == pytest.approx(math.exp(-1 / 60) / 60)
    assert chat["idleSeconds"] == 0.0


def test_a_clock_stepping_back_never_makes_figures_negative_or_nan() -> None:
    registry = WorkloadRegistry()
    registry.record_arrival("w", 100.0)
    registry.record_arrival("w", 50.0)
    registry.record_dispatch("w", -3.0, 40.0)
    registry.record_dispatch("w", math.nan, 40.0)
    stats = registry.stats_at("w", 10.0)
    assert stats.request_rate == pytest.approx(2 / 60)
    assert stats.average_wait == 0.0


@pytest.mark.parametrize("kwargs", [
    {"time_constant": 0.0},
    {"time_constant": math.nan},
    {"max_workloads": 0},
    {"idle_expiry": 0.0},
    {"idle_expiry": math.nan},
])
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        WorkloadRegistry(**kwargs)  # type: ignore[arg-type]
