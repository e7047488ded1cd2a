"""``slo-request-tracker``: running requests per endpoint, back to zero whatever the outcomes."""

from __future__ import annotations

import random
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from epp.datalayer.endpoint import Endpoint, EndpointMetadata
from epp.datalayer.pool import EndpointPool
from epp.framework.plugin import Handle
from epp.framework.registry import Registry
from epp.framework.requestcontrol import ResponseInfo
from epp.framework.scheduling import CycleState, ProfileRunResult, SchedulingResult
from epp.plugins.slo.tracker import SloRequestTracker
from epp.requests.types import ApiKind, InferenceRequest


def meta(name: str) -> EndpointMetadata:
    return EndpointMetadata(name, "10.0.0.1", 8000, 8000, MappingProxyType({}))


def tracker(pool: EndpointPool | None = None) -> SloRequestTracker:
    registry = Registry()
    registry.register(SloRequestTracker)
    built = registry.create("slo-request-tracker", "tracker", None,
                            Handle(pool=pool or EndpointPool(), rng=random.Random(1)), "plugins[0]")
    assert isinstance(built, SloRequestTracker)
    return built


def request(tpot: float | None = None) -> InferenceRequest:
    # Clients may reuse x-request-id: identical ids must not collide.
    return InferenceRequest(request_id="same-id", api=ApiKind.COMPLETIONS, path="/v1/completions", model="m",
                            target_model="m", body={}, raw_body=b"{}", stream=False, headers={}, slo_tpot_ms=tpot)


def route(t: SloRequestTracker, req: InferenceRequest, name: str) -> None:
    result = SchedulingResult({"default": ProfileRunResult([Endpoint(meta(name))])}, "default")
    t.pre_request(CycleState(), req, result)


def complete(t: SloRequestTracker, req: InferenceRequest, *, completed: bool = True) -> None:
    t.response_complete(req, ResponseInfo(completed=completed))


def test_pre_request_adds_and_response_complete_removes() -> None:
    t = tracker()
    a1, a2, b1 = request(), request(), request()
    route(t, a1, "a")
    route(t, a2, "a")
    route(t, b1, "b")
    assert (t.running("a"), t.running("b"), t.running("c")) == (2, 1, 0)
    complete(t, a1, completed=False)  # error or disconnect: removed all the same
    assert t.running("a") == 1
    complete(t, a1)  # a second call is harmless
    assert t.running("a") == 1
    complete(t, a2)
    complete(t, b1)
    assert t.debug_sizes() == {"endpoints": 0, "requests": 0}


def test_tightest_tpot_objective_of_running_requests() -> None:
    t = tracker()
    loose, tight, none = request(tpot=50.0), request(tpot=20.0), request()
    for req in (loose, tight, none):
        route(t, req, "a")
    assert t.min_running_tpot_slo("a") == 20.0
    complete(t, tight)
    assert t.min_running_tpot_slo("a") == 50.0
    complete(t, loose)
    assert t.min_running_tpot_slo("a") is None
    assert t.min_running_tpot_slo("never-seen") is None


def test_state_goes_when_the_endpoint_leaves_and_a_late_completion_is_harmless() -> None:
    pool = EndpointPool()
    pool.replace_all([meta("a")])
    t = tracker(pool)
    old = request()
    route(t, old, "a")
    pool.replace_all([])
    assert t.debug_sizes() == {"endpoints": 0, "requests": 0}
    pool.replace_all([meta("a")])  # rejoins
    new = request()
    route(t, new, "a")
    complete(t, old)  # routed to the earlier membership: must not remove the new request
    assert t.running("a") == 1
    complete(t, new)
    assert t.debug_sizes() == {"endpoints": 0, "requests": 0}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["ok", "error", "disconnect"]),
                          st.integers(min_value=1, max_value=3)), max_size=40),
       st.randoms(use_true_random=False))
def test_counts_return_to_zero_after_any_mix_of_outcomes(
        plan: list[tuple[str, str, int]], rnd: random.Random) -> None:
    t = tracker()
    in_flight: list[InferenceRequest] = []
    expected = {"a": 0, "b": 0, "c": 0}
    for name, outcome, completions in plan:
        req = request()
        route(t, req, name)
        req.plugin_state["endpoint"] = name
        req.plugin_state["outcome"] = (outcome, completions)
        in_flight.append(req)
        expected[name] += 1
    assert {n: t.running(n) for n in expected} == expected
    rnd.shuffle(in_flight)  # responses end in any order
    for req in in_flight:
        outcome, completions = req.plugin_state["outcome"]
        for _ in range(completions):  # repeated completion must not double-count
            complete(t, req, completed=outcome == "ok")
        expected[req.plugin_state["endpoint"]] -= 1
        assert {n: t.running(n) for n in expected} == expected
    assert t.debug_sizes() == {"endpoints": 0, "requests": 0}
