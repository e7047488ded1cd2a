"""Fairness policies (which flow of a band goes next) and the static usage limit."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.errors import ConfigError
from epp.flowcontrol.fairness import GlobalStrictFairnessPolicy, RoundRobinFairnessPolicy
from epp.flowcontrol.ordering import FcfsQueue
from epp.flowcontrol.types import FairnessPolicy, FlowControlRequest, FlowKey, UsageLimitPolicy
from epp.flowcontrol.usage_limit import StaticUsageLimitParams, StaticUsageLimitPolicy
from epp.framework.params import decode_params
from epp.framework.plugin import Handle

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None)
HANDLE = Handle(pool=None)  # type: ignore[arg-type]  # these policies never read the pool


@dataclass
class Flow:
    key: FlowKey
    queue: FcfsQueue = field(default_factory=FcfsQueue)


class Band:
    """What the controller keeps for one band: non-empty flows in first-arrival order."""

    def __init__(self) -> None:
        self.flows: list[Flow] = []
        self.seq = 0

    def add(self, fairness_id: str, enqueued_at: float = 0.0) -> FlowControlRequest:
        key = FlowKey(fairness_id, 0)
        flow = next((f for f in self.flows if f.key == key), None)
        if flow is None:
            flow = Flow(key)
            self.flows.append(flow)
        item = FlowControlRequest(f"r{self.seq}", key, 1, enqueued_at, enqueued_at=enqueued_at, seq=self.seq)
        self.seq += 1
        flow.queue.push(item)
        return item

    def dispatch(self, policy: Any, state: object, now: float = 0.0) -> FlowControlRequest | None:
        flow = policy.pick_flow(state, self.flows, now)
        if flow is None:
            return None
        assert flow in self.flows
        item: FlowControlRequest = flow.queue.pop(now)
        if not len(flow.queue):
            self.flows.remove(flow)
        return item


def test_policies_satisfy_the_protocols() -> None:
    assert isinstance(GlobalStrictFairnessPolicy("g", None, HANDLE), FairnessPolicy)
    assert isinstance(RoundRobinFairnessPolicy("r", None, HANDLE), FairnessPolicy)
    assert isinstance(StaticUsageLimitPolicy("s", None, HANDLE), UsageLimitPolicy)


@pytest.mark.parametrize("policy", [GlobalStrictFairnessPolicy, RoundRobinFairnessPolicy])
def test_no_flows_means_no_pick(policy: Any) -> None:
    plugin = policy("p", None, HANDLE)
    assert plugin.pick_flow(plugin.new_band_state(), [], 0.0) is None


# --- global strict ----------------------------------------------------------------------

arrivals = st.lists(st.tuples(st.sampled_from("abcde"), st.floats(min_value=0.0, max_value=3.0)), max_size=60)


@PROPERTY
@given(arrivals)
def test_global_strict_serves_the_band_as_one_queue_oldest_head_first(items: list[tuple[str, float]]) -> None:
    band = Band()
    now = 0.0
    pushed = []
    for fairness_id, step in items:
        now += step
        pushed.append(band.add(fairness_id, enqueued_at=now))
    policy = GlobalStrictFairnessPolicy("g", None, HANDLE)
    state = policy.new_band_state()
    served = []
    for _ in range(len(pushed) + 1):
        item = band.dispatch(policy, state, now)
        if item is None:
            break
        served.append(item)
    assert served == pushed  # pushed is already in (enqueued_at, seq) order
    assert band.flows == []


def test_global_strict_picks_the_oldest_head_not_the_first_flow() -> None:
    band = Band()
    band.add("late", enqueued_at=5.0)
    band.add("early", enqueued_at=1.0)
    policy = GlobalStrictFairnessPolicy("g", None, HANDLE)
    picked = policy.pick_flow(policy.new_band_state(), band.flows, 10.0)
    assert picked is not None and picked.key.fairness_id == "early"


class ConstantRankQueue(FcfsQueue):
    def rank(self, request: FlowControlRequest, now: float) -> tuple[float, ...]:
        return (1.0,)


def test_global_strict_ties_go_to_the_earlier_flow() -> None:
    flows = [Flow(FlowKey(name, 0), ConstantRankQueue()) for name in ("first", "second")]
    for seq, flow in enumerate(reversed(flows)):
        flow.queue.push(FlowControlRequest(f"r{seq}", flow.key, 1, 0.0, seq=seq))
    policy = GlobalStrictFairnessPolicy("g", None, HANDLE)
    assert policy.pick_flow(None, flows, 0.0) is flows[0]


# --- round robin ------------------------------------------------------------------------


def test_round_robin_alternates_between_two_busy_flows() -> None:
    band = Band()
    for _ in range(500):
        band.add("a")
        band.add("b")
    policy = RoundRobinFairnessPolicy("rr", None, HANDLE)
    state = policy.new_band_state()
    served = []
    for _ in range(1_000):
        item = band.dispatch(policy, state)
        assert item is not None
        served.append(item.flow.fairness_id)
    assert served == ["a", "b"] * 500


def test_round_robin_keeps_its_turn_when_each_flow_empties_and_returns() -> None:
    # Each flow holds one request at a time: served → dropped → re-added at the end.
    band = Band()
    for name in "abc":
        band.add(name)
    policy = RoundRobinFairnessPolicy("rr", None, HANDLE)
    state = policy.new_band_state()
    served = []
    for _ in range(300):
        item = band.dispatch(policy, state)
        assert item is not None
        served.append(item.flow.fairness_id)
        band.add(item.flow.fairness_id)
    assert served == list("abc") * 100


def test_round_robin_continues_after_the_served_flow_when_it_disappears() -> None:
    band = Band()
    for name in "abcd":
        band.add(name)
    band.add("a")
    band.add("c")
    band.add("d")
    policy = RoundRobinFairnessPolicy("rr", None, HANDLE)
    state = policy.new_band_state()
    order = [band.dispatch(policy, state) for _ in range(7)]
    # b empties after its turn; the turn passes to c, not back to a.
    assert [item.flow.fairness_id for item in order if item] == list("abcdacd")


def test_band_states_are_independent() -> None:
    policy = RoundRobinFairnessPolicy("rr", None, HANDLE)
    one, two = Band(), Band()
    for band in (one, two):
        for _ in range(3):
            band.add("x")
            band.add("y")
    state_one, state_two = policy.new_band_state(), policy.new_band_state()
    first = one.dispatch(policy, state_one)
    second = two.dispatch(policy, state_two)
    assert first is not None and second is not None
    assert first.flow.fairness_id == second.flow.fairness_id == "x"


# A step: which transient flows receive a request before the next dispatch.
churn = st.lists(st.lists(st.sampled_from(["t1", "t2", "t3", "t4"]), max_size=3), min_size=1, max_size=200)
STEADY = ("s0", "s1", "s2")


@PROPERTY
@given(st.permutations([*STEADY, "t1", "t2", "t3"]), churn)
def test_round_robin_gives_backlogged_flows_equal_shares_while_others_come_and_go(
    first_arrivals: list[str], steps: list[list[str]]
) -> None:
    band = Band()
    for name in first_arrivals:  # transient flows may sit between the steady ones
        band.add(name)
    for _ in range(len(steps)):
        for name in STEADY:
            band.add(name)
    policy = RoundRobinFairnessPolicy("rr", None, HANDLE)
    state = policy.new_band_state()
    shares = dict.fromkeys(STEADY, 0)
    for transient in steps:
        for name in transient:
            band.add(name)
        item = band.dispatch(policy, state)
        assert item is not None
        if item.flow.fairness_id in shares:
            shares[item.flow.fairness_id] += 1
        assert max(shares.values()) - min(shares.values()) <= 1, shares


# --- static usage limit -----------------------------------------------------------------


def test_static_usage_limit_is_the_same_for_every_band() -> None:
    default = StaticUsageLimitPolicy("s", None, HANDLE)
    custom = StaticUsageLimitPolicy("s", decode_params(StaticUsageLimitParams, {"threshold": 0.8}, "p"), HANDLE)
    for priority in (-10, 0, 100):
        for saturation in (0.0, 0.5, 3.0):
            assert default.ceiling(priority, saturation) == 1.0
            assert custom.ceiling(priority, saturation) == 0.8


@pytest.mark.parametrize("threshold", [0, -0.5, math.inf, math.nan])
def test_static_usage_limit_rejects_a_bad_threshold_naming_the_field(threshold: float) -> None:
    with pytest.raises(ConfigError, match="threshold"):
        decode_params(StaticUsageLimitParams, {"threshold": threshold}, "usageLimit.parameters")
