"""Whatever happens to its requests, the flow controller ends with nothing queued and every request accounted once.

A scenario is a list of operations (arrivals with random priority, flow, size and TTL;
cancellations; saturation flips; clock ticks with TTL sweeps; notify; yields), played on
one event loop. Hypothesis explores short scenarios; a seeded generator plays thousands
of requests. Throughout, a dispatch must respect strict priority and the band's ceiling.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from epp.datalayer.endpoint import Endpoint
from epp.datalayer.pool import EndpointPool
from epp.errors import ResourceExhausted, ServiceUnavailable
from epp.flowcontrol.controller import BandSettings, FlowController, FlowControlSettings
from epp.flowcontrol.fairness import GlobalStrictFairnessPolicy, RoundRobinFairnessPolicy
from epp.flowcontrol.ordering import EdfOrderingPolicy, FcfsOrderingPolicy
from epp.flowcontrol.types import FlowControlRequest, FlowKey, QueueOutcome, WorkloadContext
from epp.flowcontrol.workloads import WorkloadRegistry
from epp.framework.plugin import Handle

HANDLE = Handle(pool=EndpointPool())
PRIORITIES = (10, 5, 3, 0, -1)  # 3 and -1 have no configured band: dynamic ones from the template
FLOWS = ("a", "b", "c", "d")
CEILINGS = {10: 0.9, 5: 0.8, 0: 0.6}  # unconfigured priorities: 1.0

Op = tuple[Any, ...]


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class Detector:
    def __init__(self) -> None:
        self.value = 0.0

    def saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
        return self.value


class Ceilings:
    def ceiling(self, priority: int, saturation: float, priorities: Sequence[int] = ()) -> float:
        return CEILINGS.get(priority, 1.0)


class CheckingObserver:
    """Sums what is queued and checks every dispatch against strict priority and the ceiling."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.per_request: Counter[str] = Counter()
        self.outcomes: dict[str, list[QueueOutcome]] = {}
        self.last_saturation = math.nan
        self.controller: FlowController | None = None
        self.violations: list[str] = []

    def queued(self, request: FlowControlRequest, count_delta: int, bytes_delta: int) -> None:
        self.count += count_delta
        self.bytes += bytes_delta
        self.per_request[request.request_id] += count_delta

    def left(self, request: FlowControlRequest, outcome: QueueOutcome, waited: float) -> None:
        self.outcomes.setdefault(request.request_id, []).append(outcome)
        if waited < 0:
            self.violations.append(f"{request.request_id} waited {waited}")
        if outcome is QueueOutcome.DISPATCHED and self.controller is not None:
            priority = request.flow.priority
            if self.last_saturation >= Ceilings().ceiling(priority, self.last_saturation):
                self.violations.append(f"{request.request_id} dispatched at saturation {self.last_saturation}")
            higher = [b["priority"] for b in self.controller.snapshot()["bands"]
                      if b["priority"] > priority and b["queuedRequests"]]
            if higher:
                self.violations.append(f"{request.request_id} (priority {priority}) overtook bands {higher}")

    def saturation(self, value: float) -> None:
        self.last_saturation = value


def band(priority: int, *, round_robin: bool, edf: bool, max_requests: int = 0,
         max_bytes: int = 1_000_000_000) -> BandSettings:
    fairness = (RoundRobinFairnessPolicy("rr", None, HANDLE) if round_robin
                else GlobalStrictFairnessPolicy("gs", None, HANDLE))
    ordering = EdfOrderingPolicy("edf", None, HANDLE) if edf else FcfsOrderingPolicy("fcfs", None, HANDLE)
    return BandSettings(priority=priority, fairness=fairness, ordering=ordering,
                        max_requests=max_requests, max_bytes=max_bytes)


def flow_settings() -> FlowControlSettings:
    return FlowControlSettings(
        bands={
            10: band(10, round_robin=True, edf=False, max_requests=25),
            5: band(5, round_robin=False, edf=True, max_bytes=20_000),
            0: band(0, round_robin=True, edf=True),
        },
        default_band=band(0, round_robin=False, edf=False, max_requests=15),
        usage_limit=Ceilings(),
        max_requests=60,
        max_bytes=60_000,
        poll_interval=0.001,
        band_idle_expiry=5.0,
    )


async def play(ops: Sequence[Op], *, with_runner: bool) -> Counter[QueueOutcome]:
    clock, detector, observer = Clock(), Detector(), CheckingObserver()
    fc = FlowController(flow_settings(), detector, list, workloads=WorkloadRegistry(clock=clock),
                        observer=observer, clock=clock)
    observer.controller = fc
    loop = asyncio.get_running_loop()
    runner = loop.create_task(fc.run()) if with_runner else None
    await asyncio.sleep(0)  # the server starts run() long before traffic; a task never started has no finally
    tasks: list[tuple[str, asyncio.Task[None]]] = []
    started: set[str] = set()

    async def admit(req: FlowControlRequest) -> None:
        started.add(req.request_id)
        await fc.enqueue_and_wait(req)

    for op in ops:
        kind = op[0]
        if kind == "arrive":
            _, p, f, size, ttl = op
            rid = f"r{len(tasks)}"
            req = FlowControlRequest(request_id=rid, flow=FlowKey(FLOWS[f], PRIORITIES[p]), size_bytes=size,
                                     received_at=clock.now, ttl=ttl, workload=WorkloadContext(FLOWS[f]))
            tasks.append((rid, loop.create_task(admit(req))))
        elif kind == "cancel":
            # Only a request already in admission: a task cancelled before its first step never
            # reaches the controller (in the server, admission runs inside an already running task).
            live = [t for rid, t in tasks if rid in started and not t.done()]
            if live:
                live[op[1] % len(live)].cancel()
        elif kind == "saturation":
            detector.value = op[1]
            fc.notify()
        elif kind == "tick":
            clock.now += op[1]
            fc.evict_expired()
        elif kind == "notify":
            fc.notify()
        else:
            for _ in range(op[1]):
                await asyncio.sleep(0)

    if runner is not None:
        runner.cancel()  # shutdown: close() fails whatever still waits
        await asyncio.gather(runner, return_exceptions=True)
    else:
        detector.value = 0.0
        for _ in range(20_000):
            if all(t.done() for _, t in tasks):
                break
            fc.notify()
            await asyncio.sleep(0)
    # Bounded: a request left hanging fails the test instead of stalling it.
    results = await asyncio.wait_for(asyncio.gather(*(t for _, t in tasks), return_exceptions=True), 10)

    assert observer.violations == []
    assert (fc.queued_requests, fc.queued_bytes) == (0, 0)
    assert (observer.count, observer.bytes) == (0, 0)
    assert all(v == 0 for v in observer.per_request.values())
    assert all(b["queuedRequests"] == 0 and b["flows"] == [] for b in fc.snapshot()["bands"])
    allowed: list[tuple[type[BaseException] | None, set[QueueOutcome]]] = [
        (None, {QueueOutcome.DISPATCHED}),
        (ResourceExhausted, {QueueOutcome.REJECTED_CAPACITY}),
        (ServiceUnavailable, {QueueOutcome.EVICTED_TTL, QueueOutcome.EVICTED_OTHER, QueueOutcome.REJECTED_OTHER}),
        # A cancel may also land after the controller resolved the request but before its task resumed.
        (asyncio.CancelledError, {QueueOutcome.EVICTED_CANCELLED, QueueOutcome.DISPATCHED,
                                  QueueOutcome.EVICTED_TTL, QueueOutcome.EVICTED_OTHER}),
    ]
    for (rid, _), result in zip(tasks, results, strict=True):
        outcomes = observer.outcomes.get(rid, [])
        assert len(outcomes) == 1, (rid, outcomes)
        ending = None if result is None else type(result)
        matching = [expected for kind, expected in allowed if kind is ending]
        assert len(matching) == 1, (rid, result)  # ended in exactly one of the four ways
        assert outcomes[0] in matching[0], (rid, result, outcomes)
    assert set(observer.outcomes) == {rid for rid, _ in tasks}
    return Counter(outcome for outcomes in observer.outcomes.values() for outcome in outcomes)


# ----------------------------------------------------------------------------- hypothesis

ttls = st.one_of(st.just(math.inf), st.floats(min_value=0.5, max_value=10))
operations = st.one_of(
    st.tuples(st.just("arrive"), st.integers(0, len(PRIORITIES) - 1), st.integers(0, len(FLOWS) - 1),
              st.integers(0, 3000), ttls),
    st.tuples(st.just("cancel"), st.integers(0, 100)),
    st.tuples(st.just("saturation"), st.sampled_from([0.0, 0.5, 0.7, 0.85, 1.2])),
    st.tuples(st.just("tick"), st.floats(min_value=0.0, max_value=4.0)),
    st.tuples(st.just("notify")),
    st.tuples(st.just("yield"), st.integers(1, 4)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(operations, max_size=80), with_runner=st.booleans())
def test_any_mix_of_outcomes_leaves_nothing_queued_and_each_request_accounted_once(
        ops: list[Op], with_runner: bool) -> None:
    asyncio.run(play(ops, with_runner=with_runner))


# ----------------------------------------------------------------------------- seeded long run


def random_ops(seed: int, arrivals: int) -> list[Op]:
    rng = random.Random(seed)
    ops: list[Op] = []
    while arrivals:
        roll = rng.random()
        if roll < 0.55:
            ttl = math.inf if rng.random() < 0.5 else rng.uniform(0.5, 8.0)
            ops.append(("arrive", rng.randrange(len(PRIORITIES)), rng.randrange(len(FLOWS)),
                        rng.randrange(4000), ttl))
            arrivals -= 1
        elif roll < 0.62:
            ops.append(("cancel", rng.randrange(1000)))
        elif roll < 0.70:
            ops.append(("saturation", rng.choice([0.0, 0.3, 0.65, 0.85, 0.95, 1.5])))
        elif roll < 0.78:
            ops.append(("tick", rng.uniform(0.0, 1.5)))
        elif roll < 0.85:
            ops.append(("notify",))
        else:
            ops.append(("yield", rng.randint(1, 3)))
    return ops


async def test_thousands_of_random_requests_leave_the_counters_at_zero() -> None:
    seen = await play(random_ops(seed=8, arrivals=3000), with_runner=False)
    # The run is only a test if it went through every way out.
    assert {QueueOutcome.DISPATCHED, QueueOutcome.REJECTED_CAPACITY, QueueOutcome.EVICTED_TTL,
            QueueOutcome.EVICTED_CANCELLED} <= set(seen), seen


async def test_thousands_of_random_requests_then_shutdown_leave_the_counters_at_zero() -> None:
    seen = await play(random_ops(seed=80, arrivals=3000), with_runner=True)
    assert {QueueOutcome.DISPATCHED, QueueOutcome.REJECTED_CAPACITY, QueueOutcome.EVICTED_TTL,
            QueueOutcome.EVICTED_CANCELLED, QueueOutcome.EVICTED_OTHER} <= set(seen), seen
