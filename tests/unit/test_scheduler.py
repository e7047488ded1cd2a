"""The scheduler loop and ``single-profile-handler``: run profiles, name the primary, 429 on none."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.errors import ResourceExhausted
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.scheduling import CycleState, Profile, ProfileRunResult, SchedulingResult
from epp.requests.types import InferenceRequest
from epp.scheduling.profile import SchedulerProfile, WeightedScorer
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.trace import DecisionTrace


class KeepFilter(BasePlugin):
    """Keeps only the named endpoints (test double)."""

    TYPE = "keep-filter"

    def __init__(self, name: str, keep: set[str], handle: Handle) -> None:
        super().__init__(name, None, handle)
        self.keep = keep

    def filter(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        return [ep for ep in endpoints if ep.name in self.keep]


class TwoStepHandler(BasePlugin):
    """Runs ``prefill`` first, then ``decode``; ``decode`` is primary (test double of a P/D handler)."""

    TYPE = "two-step-handler"

    def __init__(self, name: str, handle: Handle) -> None:
        super().__init__(name, None, handle)
        self.calls: list[list[str]] = []

    def pick_profiles(self, cycle: CycleState, request: InferenceRequest, profiles: Mapping[str, Profile],
                      results: Mapping[str, ProfileRunResult | None]) -> Mapping[str, Profile]:
        self.calls.append(sorted(results))
        if "prefill" not in results:
            return {"prefill": profiles["prefill"]}
        return {"prefill": profiles["prefill"], "decode": profiles["decode"]}  # prefill again is ignored

    def process_results(self, cycle: CycleState, request: InferenceRequest,
                        results: dict[str, ProfileRunResult | None]) -> SchedulingResult:
        return SchedulingResult(profile_results=results, primary_profile="decode")


def profile(create: Any, name: str, keep: set[str] | None = None, handle: Handle | None = None) -> SchedulerProfile:
    filters = [KeepFilter(f"{name}-filter", keep, handle)] if keep is not None and handle is not None else []
    return SchedulerProfile(name, filters, [WeightedScorer(create("queue-scorer"), 1.0)],
                            create("max-score-picker", name=f"{name}-picker"))


def names(result: ProfileRunResult | None) -> list[str] | None:
    return None if result is None else [ep.name for ep in result.endpoints]


def test_the_single_profile_is_run_and_is_primary(create: Any, make_endpoint: Any, make_request: Any) -> None:
    scheduler = Scheduler(create("single-profile-handler"), {"default": profile(create, "default")})
    endpoints = [make_endpoint("busy", waiting_queue_size=9), make_endpoint("idle", waiting_queue_size=0)]
    result = scheduler.schedule(CycleState(), make_request(), endpoints)
    assert result.primary_profile == "default"
    assert names(result.primary) == ["idle"]
    assert list(result.profile_results) == ["default"]


def test_no_endpoint_passing_the_filters_is_a_429(create: Any, handle: Handle, make_endpoint: Any,
                                                  make_request: Any) -> None:
    scheduler = Scheduler(create("single-profile-handler"),
                          {"default": profile(create, "default", keep=set(), handle=handle)})
    with pytest.raises(ResourceExhausted) as err:
        scheduler.schedule(CycleState(), make_request(), [make_endpoint("a")])
    assert err.value.status_code == 429
    assert err.value.body.startswith("inference error: ResourceExhausted - failed to find target endpoint")
    assert "'default'" in err.value.message


def test_the_single_profile_handler_runs_its_profiles_once(create: Any) -> None:
    handler = create("single-profile-handler")
    profiles = {"default": object()}
    assert handler.pick_profiles(CycleState(), None, profiles, {}) == profiles
    assert handler.pick_profiles(CycleState(), None, profiles, {"default": None}) == {}


def test_a_handler_is_asked_until_nothing_new_is_named(create: Any, handle: Handle, make_endpoint: Any,
                                                       make_request: Any) -> None:
    handler = TwoStepHandler("pd", handle)
    scheduler = Scheduler(handler, {
        "prefill": profile(create, "prefill", keep={"p"}, handle=handle),
        "decode": profile(create, "decode", keep={"d"}, handle=handle),
    })
    result = scheduler.schedule(CycleState(), make_request(), [make_endpoint("p"), make_endpoint("d")])
    assert handler.calls == [[], ["prefill"], ["decode", "prefill"]]
    assert {name: names(r) for name, r in result.profile_results.items()} == {"prefill": ["p"], "decode": ["d"]}
    assert names(result.primary) == ["d"]


def test_a_profile_with_no_endpoints_is_passed_to_the_handler_as_none(create: Any, handle: Handle,
                                                                      make_endpoint: Any, make_request: Any) -> None:
    handler = TwoStepHandler("pd", handle)
    scheduler = Scheduler(handler, {
        "prefill": profile(create, "prefill", keep=set(), handle=handle),
        "decode": profile(create, "decode", keep={"d"}, handle=handle),
    })
    result = scheduler.schedule(CycleState(), make_request(), [make_endpoint("d")])
    assert {name: names(r) for name, r in result.profile_results.items()} == {"prefill": None, "decode": ["d"]}


def test_the_trace_covers_every_profile_run(create: Any, handle: Handle, make_endpoint: Any,
                                            make_request: Any) -> None:
    scheduler = Scheduler(TwoStepHandler("pd", handle), {
        "prefill": profile(create, "prefill", keep={"p"}, handle=handle),
        "decode": profile(create, "decode", keep={"d"}, handle=handle),
    })
    trace = DecisionTrace("r", "m", ["p", "d"])
    scheduler.schedule(CycleState(), make_request(), [make_endpoint("p"), make_endpoint("d")], trace)
    profiles = trace.as_dict()["profiles"]
    assert {name: entry["picked"] for name, entry in profiles.items()} == {"prefill": ["p"], "decode": ["d"]}
    assert profiles["decode"]["filters"] == [{"plugin": "decode-filter/keep-filter", "kept": ["d"]}]
