"""Ordering policies: each queue pops exactly what was pushed and not removed, once, in its order."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.errors import ConfigError
from epp.flowcontrol.ordering import (
    DeadlineQueue,
    EdfOrderingPolicy,
    FcfsOrderingPolicy,
    SloDeadlineOrderingPolicy,
    WorkloadAwareOrderingPolicy,
    WorkloadAwareParams,
)
from epp.flowcontrol.types import FlowControlRequest, FlowKey, FlowQueue, OrderingPolicy, WorkloadContext, WorkloadStats
from epp.flowcontrol.workloads import WorkloadRegistry
from epp.framework.params import decode_params
from epp.framework.plugin import Handle

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None)
FLOW = FlowKey("tenant", 0)


def request(
    seq: int,
    *,
    enqueued_at: float = 0.0,
    ttl: float = math.inf,
    received_at: float | None = None,
    slo_ttft_ms: float | None = None,
    workload: WorkloadContext | None = None,
) -> FlowControlRequest:
    return FlowControlRequest(
        request_id=f"r{seq}",
        flow=FLOW,
        size_bytes=10,
        received_at=enqueued_at if received_at is None else received_at,
        ttl=ttl,
        slo_ttft_ms=slo_ttft_ms,
        workload=workload or WorkloadContext(),
        enqueued_at=enqueued_at,
        seq=seq,
    )


def handle(workloads: Any = None) -> Handle:
    return Handle(pool=None, workloads=workloads)  # type: ignore[arg-type]  # ordering never reads the pool


# One operation of a random run: push a request (its timing fields), pop, or remove the
# k-th pushed request (which may already be gone: remove must then say False).
ttls = st.one_of(st.just(math.inf), st.floats(min_value=0.0, max_value=100.0))
slos = st.one_of(st.none(), st.floats(min_value=1.0, max_value=100_000.0))
push_op = st.tuples(st.just("push"), st.floats(min_value=0.0, max_value=5.0), ttls, slos,
                    st.floats(min_value=0.0, max_value=50.0))
operations = st.lists(
    st.one_of(push_op, st.tuples(st.just("pop")), st.tuples(st.just("remove"), st.integers(0, 200))),
    max_size=120,
)


def edf_key(r: FlowControlRequest) -> tuple[float, int]:
    return (r.enqueued_at + r.ttl, r.seq)


def slo_key(r: FlowControlRequest) -> tuple[float, int]:
    deadline = math.inf if r.slo_ttft_ms is None else r.received_at + r.slo_ttft_ms / 1000.0
    return (deadline, r.seq)


def fcfs_key(r: FlowControlRequest) -> tuple[float, int]:
    return (0.0, r.seq)


def run(queue: FlowQueue, ops: list[tuple[Any, ...]], order: Callable[[FlowControlRequest], tuple[float, int]]) -> None:
    pushed: list[FlowControlRequest] = []
    live: set[FlowControlRequest] = set()
    popped: list[FlowControlRequest] = []
    clock = 0.0
    for op in ops:
        if op[0] == "push":
            _, step, ttl, slo, received_ago = op
            clock += step
            item = request(len(pushed), enqueued_at=clock, ttl=ttl, slo_ttft_ms=slo, received_at=clock - received_ago)
            pushed.append(item)
            live.add(item)
            queue.push(item)
        elif op[0] == "pop":
            if not live:
                assert queue.peek(clock) is None
                with pytest.raises(IndexError):
                    queue.pop(clock)
                continue
            expected = min(live, key=order)
            assert queue.peek(clock) is expected
            assert queue.pop(clock) is expected
            live.discard(expected)
            popped.append(expected)
        else:
            target = pushed[op[1] % len(pushed)] if pushed else request(10_000)
            assert queue.remove(target) is (target in live)
            live.discard(target)
        assert len(queue) == len(live)
        assert set(queue) == live
        if isinstance(queue, DeadlineQueue):
            assert queue.heap_size <= 2 * len(live)
    drained = []
    while len(queue):
        drained.append(queue.pop(clock))
    assert drained == sorted(live, key=order)
    assert len(set(popped + drained)) == len(popped) + len(drained)  # nothing served twice


@PROPERTY
@given(operations)
def test_fcfs_pops_in_arrival_order(ops: list[tuple[Any, ...]]) -> None:
    run(FcfsOrderingPolicy("fcfs", None, handle()).new_queue(), ops, fcfs_key)


@PROPERTY
@given(operations)
def test_edf_pops_earliest_queue_deadline_first(ops: list[tuple[Any, ...]]) -> None:
    run(EdfOrderingPolicy("edf", None, handle()).new_queue(), ops, edf_key)


@PROPERTY
@given(operations)
def test_slo_pops_earliest_ttft_deadline_first(ops: list[tuple[Any, ...]]) -> None:
    run(SloDeadlineOrderingPolicy("slo", None, handle()).new_queue(), ops, slo_key)


@pytest.mark.parametrize("policy", [EdfOrderingPolicy, SloDeadlineOrderingPolicy])
def test_deadline_heap_stays_bounded_when_almost_everything_is_removed(policy: Any) -> None:
    queue = policy("p", None, handle()).new_queue()
    keeper = request(0, ttl=1.0, slo_ttft_ms=1.0)
    queue.push(keeper)
    for seq in range(1, 10_001):
        item = request(seq, enqueued_at=float(seq), ttl=5.0, slo_ttft_ms=5.0)
        queue.push(item)
        assert queue.remove(item)
    assert len(queue) == 1
    assert queue.heap_size <= 2
    assert queue.pop(0.0) is keeper


def test_policies_satisfy_the_ordering_protocol() -> None:
    for policy in (FcfsOrderingPolicy, EdfOrderingPolicy, SloDeadlineOrderingPolicy, WorkloadAwareOrderingPolicy):
        assert isinstance(policy("p", None, handle()), OrderingPolicy)


def test_edf_requests_without_ttl_go_last_in_arrival_order() -> None:
    queue = EdfOrderingPolicy("edf", None, handle()).new_queue()
    forever_first, late, forever_second, soon = (
        request(0), request(1, ttl=30.0), request(2), request(3, enqueued_at=1.0, ttl=5.0))
    for item in (forever_first, late, forever_second, soon):
        queue.push(item)
    assert [queue.pop(2.0) for _ in range(4)] == [soon, late, forever_first, forever_second]


def test_slo_requests_without_slo_go_after_those_with_one() -> None:
    queue = SloDeadlineOrderingPolicy("slo", None, handle()).new_queue()
    plain_first, relaxed, plain_second, tight = (
        request(0), request(1, slo_ttft_ms=2_000.0), request(2), request(3, received_at=0.5, slo_ttft_ms=500.0))
    for item in (plain_first, relaxed, plain_second, tight):
        queue.push(item)
    assert [queue.pop(0.0) for _ in range(4)] == [tight, relaxed, plain_first, plain_second]


def test_fcfs_rank_orders_heads_of_different_flows_by_arrival() -> None:
    queue = FcfsOrderingPolicy("fcfs", None, handle()).new_queue()
    assert queue.rank(request(5, enqueued_at=1.0), 9.0) < queue.rank(request(6, enqueued_at=1.0), 9.0)
    assert queue.rank(request(7, enqueued_at=0.5), 9.0) < queue.rank(request(6, enqueued_at=1.0), 9.0)


# --- workload-aware ---------------------------------------------------------------------


class FixedStats:
    """A workload stats view with fixed figures per workload."""

    def __init__(self, figures: dict[str, WorkloadStats]) -> None:
        self.figures = figures

    def stats(self, workload_id: str) -> WorkloadStats:
        return self.figures.get(workload_id, WorkloadStats())


def workload_request(seq: int, workload_id: str, criticality: int = 3, enqueued_at: float = 0.0) -> FlowControlRequest:
    return request(seq, enqueued_at=enqueued_at, workload=WorkloadContext(workload_id, criticality))


def test_workload_aware_serves_higher_criticality_first() -> None:
    queue = WorkloadAwareOrderingPolicy("wa", None, handle()).new_queue()
    low, mid, high = (workload_request(0, "a", 1), workload_request(1, "b", 3), workload_request(2, "c", 5))
    for item in (low, mid, high):
        queue.push(item)
    assert [queue.pop(10.0) for _ in range(3)] == [high, mid, low]


def test_workload_aware_criticality_beats_a_long_wait_and_a_low_rate() -> None:
    stats = FixedStats({"busy": WorkloadStats(request_rate=100.0), "quiet": WorkloadStats(average_wait=50.0)})
    queue = WorkloadAwareOrderingPolicy("wa", None, handle(stats)).new_queue()
    old_quiet = workload_request(0, "quiet", 4, enqueued_at=0.0)
    fresh_busy = workload_request(1, "busy", 5, enqueued_at=999.0)
    queue.push(old_quiet)
    queue.push(fresh_busy)
    assert queue.pop(1000.0) is fresh_busy
    assert queue.rank(fresh_busy, 1000.0) < queue.rank(old_quiet, 1000.0)


def test_workload_aware_missing_headers_rank_as_criticality_3() -> None:
    queue = WorkloadAwareOrderingPolicy("wa", None, handle()).new_queue()
    two, defaulted, three, four = (
        workload_request(0, "x", 2),
        request(1),  # no workload headers at all
        workload_request(2, "y", 3),
        workload_request(3, "z", 4),
    )
    out_of_range = request(4, workload=WorkloadContext("w", 9))
    for item in (two, defaulted, three, four, out_of_range):
        queue.push(item)
    assert [queue.pop(0.0) for _ in range(5)] == [four, defaulted, three, out_of_range, two]


def test_a_flooding_workload_does_not_starve_a_light_one() -> None:
    stats = FixedStats({"flood": WorkloadStats(request_rate=50.0), "light": WorkloadStats(request_rate=0.1)})
    queue = WorkloadAwareOrderingPolicy("wa", None, handle(stats)).new_queue()
    flood = [workload_request(seq, "flood") for seq in range(50)]
    light = [workload_request(50 + seq, "light", enqueued_at=0.1) for seq in range(2)]
    for item in flood + light:
        queue.push(item)
    served = [queue.pop(1.0 + step * 0.01) for step in range(52)]
    assert set(served[:3]) >= set(light)
    assert [r for r in served if r.workload.workload_id == "flood"] == flood  # all served, FIFO within the workload


def test_a_flooders_requests_still_age_and_get_served_while_light_traffic_keeps_coming() -> None:
    stats = FixedStats({"flood": WorkloadStats(request_rate=50.0), "light": WorkloadStats(request_rate=1.0)})
    queue = WorkloadAwareOrderingPolicy("wa", None, handle(stats)).new_queue()
    for seq in range(50):
        queue.push(workload_request(seq, "flood"))
    seq = 50
    flood_served = 0
    now = 0.0
    for _ in range(3_000):  # one light arrival per dispatch, forever fresh
        now += 0.1
        queue.push(workload_request(seq, "light", enqueued_at=now))
        seq += 1
        if queue.pop(now).workload.workload_id == "flood":
            flood_served += 1
    # The flooder waits much longer (its share is divided by its rate) but every one of its
    # requests is served while the light workload never stops, and light is not held back:
    # at most one light request is left behind per flooder request served.
    assert flood_served == 50
    assert len(queue) <= 50
    assert all(r.workload.workload_id == "light" for r in queue)


def test_workload_aware_among_equals_is_first_come_first_served() -> None:
    queue = WorkloadAwareOrderingPolicy("wa", None, handle()).new_queue()
    items = [workload_request(seq, f"w{seq % 3}", enqueued_at=1.0) for seq in range(6)]
    for item in items:
        queue.push(item)
    assert [queue.pop(2.0) for _ in range(6)] == items


def test_workload_aware_reads_a_registry_attached_after_construction() -> None:
    shared = handle()
    queue = WorkloadAwareOrderingPolicy("wa", None, shared).new_queue()
    registry = WorkloadRegistry(clock=lambda: 10.0)
    for step in range(100):
        registry.record_arrival("flood", 10.0 - step * 0.01)
    shared.workloads = registry
    flood = workload_request(0, "flood", enqueued_at=9.0)
    light = workload_request(1, "light", enqueued_at=9.5)
    queue.push(flood)
    queue.push(light)
    assert queue.pop(10.0) is light


def test_workload_aware_remove_and_len() -> None:
    queue = WorkloadAwareOrderingPolicy("wa", None, handle()).new_queue()
    a, b, c = workload_request(0, "a"), workload_request(1, "b"), workload_request(2, "a")
    for item in (a, b, c):
        queue.push(item)
    assert queue.remove(a) and not queue.remove(a)
    assert len(queue) == 2 and set(queue) == {b, c}
    assert {queue.pop(0.0), queue.pop(0.0)} == {b, c}
    assert queue.peek(0.0) is None and len(queue) == 0
    with pytest.raises(IndexError):
        queue.pop(0.0)


@pytest.mark.parametrize(("raw", "field"), [
    ({"referenceRate": 0}, "referenceRate"),
    ({"referenceRate": math.inf}, "referenceRate"),
    ({"baseWait": "0s"}, "baseWait"),
])
def test_workload_aware_rejects_bad_parameters_naming_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        decode_params(WorkloadAwareParams, raw, "plugins[0].parameters")


workload_ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.sampled_from(["a", "b", "c"]), st.integers(0, 6)),  # 0 and 6: out of range
        st.tuples(st.just("pop")),
        st.tuples(st.just("remove"), st.integers(0, 200)),
    ),
    max_size=120,
)


@PROPERTY
@given(workload_ops)
def test_workload_aware_pops_exactly_the_live_requests_once_best_rank_first(ops: list[tuple[Any, ...]]) -> None:
    stats = FixedStats({"a": WorkloadStats(request_rate=20.0), "b": WorkloadStats(average_wait=3.0)})
    queue = WorkloadAwareOrderingPolicy("wa", None, handle(stats)).new_queue()
    pushed: list[FlowControlRequest] = []
    live: set[FlowControlRequest] = set()
    now = 0.0
    for op in ops:
        now += 0.25
        if op[0] == "push":
            item = request(len(pushed), enqueued_at=now, workload=WorkloadContext(op[1], op[2]))
            pushed.append(item)
            live.add(item)
            queue.push(item)
        elif op[0] == "pop" and live:
            expected = min(live, key=lambda r: queue.rank(r, now))
            assert queue.pop(now) is expected
            live.discard(expected)
        elif op[0] == "remove" and pushed:
            target = pushed[op[1] % len(pushed)]
            assert queue.remove(target) is (target in live)
            live.discard(target)
        assert len(queue) == len(live) and set(queue) == live
    drained = [queue.pop(now) for _ in range(len(live))]
    assert set(drained) == live and len(queue) == 0
    assert [-r.workload.criticality for r in drained] == sorted(-r.workload.criticality for r in drained)
