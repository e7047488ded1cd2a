"""``slo-aware-profile-handler``: requests with objectives run the SLO profile, the rest the default one."""

from __future__ import annotations

import random
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest

from epp.datalayer.endpoint import Endpoint, EndpointMetadata
from epp.datalayer.pool import EndpointPool
from epp.errors import ConfigError, ResourceExhausted
from epp.framework.plugin import Handle
from epp.framework.registry import Registry
from epp.framework.scheduling import CycleState, ProfileHandler, ProfileRunResult, SchedulingTrace
from epp.plugins.slo.profile_handler import SloAwareProfileHandler
from epp.requests.types import ApiKind, InferenceRequest
from epp.scheduling.scheduler import Scheduler


class FixedProfile:
    """A profile that always chooses one endpoint (or none), and records that it ran."""

    def __init__(self, name: str, choice: str | None) -> None:
        self._name = name
        self._choice = choice
        self.runs = 0

    @property
    def name(self) -> str:
        return self._name

    def run(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint],
            trace: SchedulingTrace | None = None) -> ProfileRunResult:
        self.runs += 1
        return ProfileRunResult([ep for ep in endpoints if ep.name == self._choice])


def handler(params: Mapping[str, Any] | None = None) -> SloAwareProfileHandler:
    registry = Registry()
    registry.register(SloAwareProfileHandler)
    built = registry.create("slo-aware-profile-handler", "slo-handler", params,
                            Handle(pool=EndpointPool(), rng=random.Random(1)), "plugins[2]")
    assert isinstance(built, SloAwareProfileHandler)
    return built


def request(ttft: float | None = None, tpot: float | None = None) -> InferenceRequest:
    return InferenceRequest(request_id="r", api=ApiKind.COMPLETIONS, path="/v1/completions", model="m",
                            target_model="m", body={}, raw_body=b"{}", stream=False, headers={},
                            slo_ttft_ms=ttft, slo_tpot_ms=tpot)


ENDPOINTS = [Endpoint(EndpointMetadata(n, "10.0.0.1", 8000, 8000, MappingProxyType({}))) for n in ("fast", "near")]


def schedule(h: SloAwareProfileHandler, req: InferenceRequest, profiles: dict[str, FixedProfile]) -> tuple[str, str]:
    result = Scheduler(h, profiles).schedule(CycleState(), req, ENDPOINTS)  # type: ignore[arg-type]
    return result.primary_profile, result.primary.endpoints[0].name


def profiles(slo: str = "slo-aware", default: str = "default") -> dict[str, FixedProfile]:
    return {slo: FixedProfile(slo, "fast"), default: FixedProfile(default, "near")}


@pytest.mark.parametrize(("req", "expected"), [
    pytest.param(request(ttft=200.0), ("slo-aware", "fast"), id="TTFT objective"),
    pytest.param(request(tpot=20.0), ("slo-aware", "fast"), id="TPOT objective"),
    pytest.param(request(ttft=200.0, tpot=20.0), ("slo-aware", "fast"), id="both objectives"),
    pytest.param(request(), ("default", "near"), id="no objective"),
])
def test_profile_chosen_by_objectives(req: InferenceRequest, expected: tuple[str, str]) -> None:
    configured = profiles()
    assert schedule(handler(), req, configured) == expected
    # Only the chosen profile runs: requests without objectives cost what they did before.
    assert sorted(p.runs for p in configured.values()) == [0, 1]


def test_profile_names_are_parameters() -> None:
    h = handler({"sloProfile": "fast-lane", "defaultProfile": "everyone"})
    configured = profiles("fast-lane", "everyone")
    assert schedule(h, request(ttft=100.0), configured) == ("fast-lane", "fast")
    assert schedule(h, request(), configured) == ("everyone", "near")


def test_no_endpoint_left_in_the_chosen_profile_is_a_429() -> None:
    configured = {"slo-aware": FixedProfile("slo-aware", None), "default": FixedProfile("default", "near")}
    with pytest.raises(ResourceExhausted) as err:
        schedule(handler(), request(ttft=100.0), configured)
    assert "'slo-aware'" in err.value.message


@pytest.mark.parametrize(("names", "field"), [
    (["default"], "plugins[2].parameters.sloProfile"),
    (["slo-aware"], "plugins[2].parameters.defaultProfile"),
])
def test_a_missing_profile_is_a_config_error_naming_the_parameter(names: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        handler().validate_profiles(names, "plugins[2]")
    assert err.value.field == field


def test_validates_a_complete_config_and_is_a_profile_handler() -> None:
    h = handler()
    h.validate_profiles(["default", "slo-aware", "extra"], "plugins[2]")
    assert isinstance(h, ProfileHandler)


def test_empty_profile_name_is_rejected() -> None:
    with pytest.raises(ConfigError) as err:
        handler({"sloProfile": ""})
    assert err.value.field == "plugins[2].parameters.sloProfile"
