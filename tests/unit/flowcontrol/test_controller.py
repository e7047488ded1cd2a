"""The flow controller: fast path, capacity (429), TTL (503), cancellation, strict priority, shutdown."""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.datalayer.pool import EndpointPool
from epp.errors import ResourceExhausted, ServiceUnavailable
from epp.flowcontrol.controller import BandSettings, FlowController, FlowControlSettings
from epp.flowcontrol.fairness import GlobalStrictFairnessPolicy, RoundRobinFairnessPolicy
from epp.flowcontrol.ordering import FcfsOrderingPolicy
from epp.flowcontrol.types import FlowControlRequest, FlowKey, QueueOutcome, WorkloadContext
from epp.flowcontrol.usage_limit import StaticUsageLimitPolicy
from epp.flowcontrol.workloads import WorkloadRegistry
from epp.framework.plugin import Handle

# ----------------------------------------------------------------------------- test doubles of inputs


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SettableDetector:
    """Saturation as the test says it is."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
        return self.value


class CapacityDetector:
    """Saturation = in flight / capacity, like a concurrency detector; the test's workers raise in_flight."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight = 0

    def saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
        return 1.0 if self.capacity <= 0 else self.in_flight / self.capacity


class PerBandCeiling:
    def __init__(self, ceilings: dict[int, float]) -> None:
        self.ceilings = ceilings

    def ceiling(self, priority: int, saturation: float, priorities: Sequence[int] = ()) -> float:
        return self.ceilings.get(priority, 1.0)


class RecordingObserver:
    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.per_request: Counter[str] = Counter()
        self.outcomes: dict[str, list[QueueOutcome]] = {}
        self.waited: dict[str, float] = {}
        self.saturations: list[float] = []

    def queued(self, request: FlowControlRequest, count_delta: int, bytes_delta: int) -> None:
        assert count_delta in (1, -1) and bytes_delta == count_delta * request.size_bytes
        self.count += count_delta
        self.bytes += bytes_delta
        self.per_request[request.request_id] += count_delta

    def left(self, request: FlowControlRequest, outcome: QueueOutcome, waited: float) -> None:
        self.outcomes.setdefault(request.request_id, []).append(outcome)
        self.waited[request.request_id] = waited

    def saturation(self, value: float) -> None:
        self.saturations.append(value)


# ----------------------------------------------------------------------------- builders

HANDLE = Handle(pool=EndpointPool())


def band(priority: int, *, max_bytes: int = 1_000_000_000, max_requests: int = 0,
         round_robin: bool = False) -> BandSettings:
    fairness = (RoundRobinFairnessPolicy("rr", None, HANDLE) if round_robin
                else GlobalStrictFairnessPolicy("gs", None, HANDLE))
    return BandSettings(priority=priority, max_bytes=max_bytes, max_requests=max_requests,
                        fairness=fairness, ordering=FcfsOrderingPolicy("fcfs", None, HANDLE))


def settings(*bands: BandSettings, usage_limit: Any = None, **kwargs: Any) -> FlowControlSettings:
    return FlowControlSettings(
        bands={b.priority: b for b in bands},
        default_band=band(0),
        usage_limit=usage_limit or StaticUsageLimitPolicy("limit", None, HANDLE),
        **kwargs,
    )


def request(rid: str, *, priority: int = 0, fairness_id: str = "f", size: int = 100, ttl: float = math.inf,
            workload: str = "default") -> FlowControlRequest:
    return FlowControlRequest(request_id=rid, flow=FlowKey(fairness_id, priority), size_bytes=size,
                              received_at=0.0, ttl=ttl, workload=WorkloadContext(workload_id=workload))


class Rig:
    def __init__(self, fc_settings: FlowControlSettings, detector: Any = None,
                 workloads: WorkloadRegistry | None = None) -> None:
        self.clock = FakeClock()
        self.detector = detector if detector is not None else SettableDetector()
        self.observer = RecordingObserver()
        self.fc = FlowController(fc_settings, self.detector, list, workloads=workloads,
                                 observer=self.observer, clock=self.clock)

    def start(self, req: FlowControlRequest) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self.fc.enqueue_and_wait(req))

    def assert_empty(self) -> None:
        assert self.fc.queued_requests == 0 and self.fc.queued_bytes == 0
        assert self.observer.count == 0 and self.observer.bytes == 0


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


# ----------------------------------------------------------------------------- fast path


async def test_an_idle_pool_admits_at_once_without_queueing() -> None:
    workloads = WorkloadRegistry(clock=FakeClock())
    rig = Rig(settings(band(0)), workloads=workloads)
    await rig.fc.enqueue_and_wait(request("a", workload="batch"))
    assert rig.observer.outcomes == {"a": [QueueOutcome.DISPATCHED]}
    assert rig.observer.waited["a"] == 0.0
    assert rig.observer.per_request == Counter()  # never queued
    assert rig.observer.saturations == [0.0]
    assert "batch" in workloads
    rig.assert_empty()


async def test_a_saturated_pool_holds_the_request_until_capacity_frees() -> None:
    rig = Rig(settings(band(0)), detector=SettableDetector(1.0))
    task = rig.start(request("a", size=70))
    await settle()
    assert not task.done()
    assert (rig.fc.queued_requests, rig.fc.queued_bytes) == (1, 70)
    rig.clock.now += 2.5
    rig.detector.value = 0.4
    rig.fc.notify()
    await asyncio.wait_for(task, 1)
    assert rig.observer.outcomes == {"a": [QueueOutcome.DISPATCHED]}
    assert rig.observer.waited["a"] == pytest.approx(2.5)
    rig.assert_empty()


async def test_a_lower_priority_arrival_waits_behind_a_queued_higher_band_even_when_below_its_ceiling() -> None:
    rig = Rig(settings(band(10), band(0), usage_limit=PerBandCeiling({10: 0.5, 0: 1.0})),
              detector=SettableDetector(0.7))
    high = rig.start(request("high", priority=10))
    await settle()
    low = rig.start(request("low", priority=0))
    rig.fc.notify()
    await settle()
    # 0.7 is below band 0's ceiling, but band 10 is blocked and strict priority holds band 0 too.
    assert not high.done() and not low.done()
    assert rig.fc.queued_requests == 2
    high.cancel()
    await settle()
    rig.fc.notify()
    await asyncio.wait_for(low, 1)
    assert rig.observer.outcomes == {"high": [QueueOutcome.EVICTED_CANCELLED], "low": [QueueOutcome.DISPATCHED]}
    rig.assert_empty()


# ----------------------------------------------------------------------------- capacity


@pytest.mark.parametrize(("fc_settings", "sizes", "message"), [
    (settings(band(0), max_requests=2), [1, 1, 1], "global maxRequests is 2"),
    (settings(band(0), max_bytes=250), [100, 100, 100], "global maxBytes 250"),
    (settings(band(0, max_requests=2)), [1, 1, 1], "priority band 0 has 2 requests queued, its maxRequests is 2"),
    (settings(band(0, max_bytes=250)), [100, 100, 100], "its maxBytes is 250"),
])
async def test_a_full_queue_rejects_with_429_naming_the_limit(
        fc_settings: FlowControlSettings, sizes: list[int], message: str) -> None:
    rig = Rig(fc_settings, detector=SettableDetector(1.0))
    waiting = [rig.start(request(f"r{i}", size=size)) for i, size in enumerate(sizes[:-1])]
    await settle()
    with pytest.raises(ResourceExhausted) as caught:
        await rig.fc.enqueue_and_wait(request("over", size=sizes[-1]))
    assert caught.value.status_code == 429
    assert message in caught.value.message
    assert rig.observer.outcomes["over"] == [QueueOutcome.REJECTED_CAPACITY]
    assert rig.fc.queued_requests == len(waiting)
    rig.fc.close()
    await asyncio.gather(*waiting, return_exceptions=True)
    rig.assert_empty()


async def test_band_limits_apply_to_their_own_band_only() -> None:
    rig = Rig(settings(band(5, max_requests=1), band(0)), detector=SettableDetector(1.0))
    waiting = [rig.start(request("h1", priority=5)), rig.start(request("l1")), rig.start(request("l2"))]
    await settle()
    assert rig.fc.queued_requests == 3
    with pytest.raises(ResourceExhausted, match="priority band 5"):
        await rig.fc.enqueue_and_wait(request("h2", priority=5))
    rig.fc.close()
    await asyncio.gather(*waiting, return_exceptions=True)
    rig.assert_empty()


async def test_a_request_larger_than_its_band_allows_is_rejected_even_when_idle() -> None:
    rig = Rig(settings(band(0, max_bytes=10)))
    with pytest.raises(ResourceExhausted, match="maxBytes is 10"):
        await rig.fc.enqueue_and_wait(request("big", size=11))
    assert rig.observer.outcomes == {"big": [QueueOutcome.REJECTED_CAPACITY]}


async def test_an_unconfigured_priority_gets_a_band_from_the_default_template() -> None:
    fc_settings = FlowControlSettings(bands={}, default_band=band(0, max_requests=1),
                                      usage_limit=StaticUsageLimitPolicy("l", None, HANDLE))
    rig = Rig(fc_settings, detector=SettableDetector(1.0))
    first = rig.start(request("a", priority=7))
    await settle()
    with pytest.raises(ResourceExhausted, match="priority band 7"):
        await rig.fc.enqueue_and_wait(request("b", priority=7))
    snap = rig.fc.snapshot()
    assert [(b["priority"], b["dynamic"], b["queuedRequests"]) for b in snap["bands"]] == [(7, True, 1)]
    rig.fc.close()
    await asyncio.gather(first, return_exceptions=True)


# ----------------------------------------------------------------------------- TTL


async def test_a_request_past_its_ttl_is_evicted_with_503() -> None:
    rig = Rig(settings(band(0)), detector=SettableDetector(1.0))
    short = rig.start(request("short", ttl=5, size=40))
    patient = rig.start(request("patient", ttl=50, size=60))
    await settle()
    rig.clock.now += 4.9
    assert rig.fc.evict_expired() == 0
    rig.clock.now += 0.2
    assert rig.fc.evict_expired() == 1
    with pytest.raises(ServiceUnavailable) as caught:
        await short
    assert caught.value.status_code == 503 and "TTL" in caught.value.message
    assert rig.observer.outcomes == {"short": [QueueOutcome.EVICTED_TTL]}
    assert rig.observer.waited["short"] == pytest.approx(5.1)
    assert (rig.fc.queued_requests, rig.fc.queued_bytes) == (1, 60)
    assert not patient.done()
    rig.fc.close()
    await asyncio.gather(patient, return_exceptions=True)


async def test_the_default_ttl_applies_when_the_request_has_none_and_run_sweeps_it() -> None:
    rig = Rig(settings(band(0), default_ttl=3.0, poll_interval=0.001), detector=SettableDetector(1.0))
    runner = asyncio.get_running_loop().create_task(rig.fc.run())
    waiting = rig.start(request("a"))
    await settle()
    rig.clock.now += 3.5
    with pytest.raises(ServiceUnavailable):
        await asyncio.wait_for(waiting, 2)
    assert rig.observer.outcomes == {"a": [QueueOutcome.EVICTED_TTL]}
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    rig.assert_empty()


# ----------------------------------------------------------------------------- cancellation


async def test_a_cancelled_waiter_leaves_the_queue_at_once_and_frees_its_bytes() -> None:
    rig = Rig(settings(band(0)), detector=SettableDetector(1.0))
    gone = rig.start(request("gone", size=500))
    stays = rig.start(request("stays", size=7))
    await settle()
    assert rig.fc.queued_bytes == 507
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert (rig.fc.queued_requests, rig.fc.queued_bytes) == (1, 7)
    assert rig.observer.outcomes == {"gone": [QueueOutcome.EVICTED_CANCELLED]}
    rig.detector.value = 0.0
    rig.fc.notify()
    await asyncio.wait_for(stays, 1)
    rig.assert_empty()


async def test_a_cancel_landing_after_a_pass_was_scheduled_is_reported_once_as_cancelled() -> None:
    rig = Rig(settings(band(0)), detector=SettableDetector(1.0))
    task = rig.start(request("a"))
    await settle()
    rig.detector.value = 0.0
    rig.fc.notify()  # the pass runs before the task sees its cancellation
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rig.observer.outcomes == {"a": [QueueOutcome.EVICTED_CANCELLED]}
    rig.assert_empty()


async def test_a_cancel_landing_after_dispatch_keeps_the_dispatched_outcome() -> None:
    rig = Rig(settings(band(0)), detector=SettableDetector(1.0))
    task = rig.start(request("a"))
    await settle()
    rig.detector.value = 0.0
    rig.fc.notify()
    await asyncio.sleep(0)  # the pass resolves the future; the task has not resumed yet
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rig.observer.outcomes == {"a": [QueueOutcome.DISPATCHED]}
    rig.assert_empty()


# ----------------------------------------------------------------------------- strict priority


async def test_capacity_freed_one_slot_at_a_time_goes_to_the_highest_band_first() -> None:
    detector = CapacityDetector(capacity=0)
    rig = Rig(settings(band(10), band(0), band(-5)), detector=detector)
    served: list[str] = []

    async def worker(req: FlowControlRequest) -> None:
        await rig.fc.enqueue_and_wait(req)
        detector.in_flight += 1  # what pre-request does: the endpoint's load rises
        served.append(req.request_id)

    names = [("low1", 0), ("sheddable", -5), ("low2", 0), ("high1", 10), ("high2", 10)]
    tasks = [asyncio.get_running_loop().create_task(worker(request(n, priority=p))) for n, p in names]
    await settle()
    assert rig.fc.queued_requests == 5
    for _ in range(len(names)):
        detector.capacity += 1
        rig.fc.notify()
        await settle()
    assert served == ["high1", "high2", "low1", "low2", "sheddable"]
    await asyncio.gather(*tasks)
    rig.assert_empty()


async def test_one_request_is_released_per_pass_so_each_sees_the_load_of_the_previous() -> None:
    detector = CapacityDetector(capacity=0)
    rig = Rig(settings(band(0)), detector=detector)

    async def worker(req: FlowControlRequest) -> None:
        await rig.fc.enqueue_and_wait(req)
        detector.in_flight += 1

    tasks = [asyncio.get_running_loop().create_task(worker(request(f"r{i}"))) for i in range(6)]
    await settle()
    detector.capacity = 2
    rig.fc.notify()
    rig.fc.notify()  # coalesced with the first
    await settle()
    assert detector.in_flight == 2
    assert rig.fc.queued_requests == 4
    rig.fc.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    rig.assert_empty()


async def test_round_robin_alternates_flows_within_a_band() -> None:
    detector = CapacityDetector(capacity=0)
    rig = Rig(settings(band(0, round_robin=True)), detector=detector)
    served: list[str] = []

    async def worker(req: FlowControlRequest) -> None:
        await rig.fc.enqueue_and_wait(req)
        detector.in_flight += 1
        served.append(req.request_id)

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(worker(request(f"a{i}", fairness_id="a"))) for i in range(3)]
    tasks += [loop.create_task(worker(request(f"b{i}", fairness_id="b"))) for i in range(3)]
    await settle()
    for _ in range(6):
        detector.capacity += 1
        rig.fc.notify()
        await settle()
    assert [s[0] for s in served] == ["a", "b", "a", "b", "a", "b"]
    await asyncio.gather(*tasks)


# ----------------------------------------------------------------------------- shutdown


async def test_close_fails_every_waiter_with_503_and_rejects_later_arrivals() -> None:
    rig = Rig(settings(band(0), band(3)), detector=SettableDetector(1.0))
    tasks = [rig.start(request(f"r{i}", priority=3 * (i % 2))) for i in range(4)]
    await settle()
    rig.fc.close()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ServiceUnavailable) and r.message == "picker shutting down" for r in results)
    assert rig.observer.outcomes == {f"r{i}": [QueueOutcome.EVICTED_OTHER] for i in range(4)}
    with pytest.raises(ServiceUnavailable, match="shutting down"):
        await rig.fc.enqueue_and_wait(request("late"))
    assert rig.observer.outcomes["late"] == [QueueOutcome.REJECTED_OTHER]
    rig.assert_empty()


async def test_cancelling_run_fails_the_waiters_instead_of_leaving_them_hanging() -> None:
    rig = Rig(settings(band(0), poll_interval=0.001), detector=SettableDetector(1.0))
    runner = asyncio.get_running_loop().create_task(rig.fc.run())
    waiting = rig.start(request("a"))
    await settle()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    with pytest.raises(ServiceUnavailable, match="shutting down"):
        await asyncio.wait_for(waiting, 1)
    rig.assert_empty()


async def test_run_polls_so_a_drop_in_saturation_releases_waiters_without_notify() -> None:
    rig = Rig(settings(band(0), poll_interval=0.001), detector=SettableDetector(1.0))
    runner = asyncio.get_running_loop().create_task(rig.fc.run())
    waiting = rig.start(request("a"))
    await settle()
    rig.detector.value = 0.2
    await asyncio.wait_for(waiting, 2)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert rig.observer.outcomes == {"a": [QueueOutcome.DISPATCHED]}


async def test_run_drops_an_idle_dynamic_band_after_its_expiry() -> None:
    rig = Rig(settings(band(0), band_idle_expiry=60), detector=SettableDetector(1.0))
    task = rig.start(request("a", priority=4))
    await settle()
    rig.detector.value = 0.0
    rig.fc.notify()
    await task
    assert [b["priority"] for b in rig.fc.snapshot()["bands"]] == [4, 0]
    rig.clock.now += 61
    runner = asyncio.get_running_loop().create_task(rig.fc.run())
    await settle()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert [b["priority"] for b in rig.fc.snapshot()["bands"]] == [0]


# ----------------------------------------------------------------------------- snapshot


async def test_snapshot_is_json_and_caps_flows_per_band() -> None:
    rig = Rig(settings(band(0), max_bytes=10**9, max_requests=500), detector=SettableDetector(1.0))
    tasks = [rig.start(request(f"r{i}", fairness_id=f"tenant{i}", size=10)) for i in range(105)]
    await settle()
    rig.clock.now += 2
    snap = json.loads(json.dumps(rig.fc.snapshot(), allow_nan=False))
    assert snap["saturation"] == 1.0
    assert (snap["queuedRequests"], snap["queuedBytes"]) == (105, 1050)
    assert snap["limits"] == {"maxBytes": 10**9, "maxRequests": 500}
    (only,) = snap["bands"]
    assert only["fairnessPolicy"] == "global-strict-fairness-policy"
    assert only["orderingPolicy"] == "fcfs-ordering-policy"
    assert len(only["flows"]) == 100 and only["flowsOmitted"] == 5
    assert only["flows"][0] == {"fairnessId": "tenant0", "queuedRequests": 1, "queuedBytes": 10,
                                "oldestWaitSeconds": 2.0}
    rig.fc.close()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_settings_reject_a_band_keyed_under_another_priority() -> None:
    with pytest.raises(ValueError, match="band keyed 1 has priority 2"):
        FlowControlSettings(bands={1: band(2)}, default_band=band(0),
                            usage_limit=StaticUsageLimitPolicy("l", None, HANDLE))
