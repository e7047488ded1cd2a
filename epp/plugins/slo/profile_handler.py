"""``slo-aware-profile-handler``: requests with latency objectives run the SLO profile, the rest the default one.

A request that states ``x-slo-ttft-ms`` or ``x-slo-tpot-ms`` (``slo_ttft_ms`` /
``slo_tpot_ms`` set) runs only the profile named by ``sloProfile`` ("slo-aware"); every
other request runs only ``defaultProfile`` ("default"), so requests without objectives
are routed exactly as without this handler. The profile that ran is primary. When its
filters leave no endpoint the request fails with 429, as with ``single-profile-handler``.

The type name is the one the Go EPP's earlier SLO handler used
(``pkg/epp/scheduling/framework/plugins/profile``, removed since; current GIE and llm-d
register no handler for this). That one ran a "prefix" profile first and then all others,
choosing the primary from the ``x-prediction-based-scheduling`` header; this one chooses
from the objectives and runs one profile, so a request costs one profile's work.

Both names must be scheduling profiles of the config: ``validate_profiles`` raises a
``ConfigError`` naming the parameter (the loader calls it once the profiles are built).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from epp.errors import ConfigError, InternalError, ResourceExhausted, bounded_repr
from epp.framework.params import require
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.scheduling import CycleState, Profile, ProfileRunResult, SchedulingResult
from epp.requests.types import InferenceRequest

__all__ = ["SloAwareProfileHandler", "SloAwareProfileParams", "has_objectives"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SloAwareProfileParams:
    slo_profile: str = "slo-aware"
    default_profile: str = "default"

    def __post_init__(self) -> None:
        require(bool(self.slo_profile), "slo_profile", "must not be empty", self.slo_profile)
        require(bool(self.default_profile), "default_profile", "must not be empty", self.default_profile)


def has_objectives(request: InferenceRequest) -> bool:
    return request.slo_ttft_ms is not None or request.slo_tpot_ms is not None


class SloAwareProfileHandler(BasePlugin):
    """Runs the SLO profile for requests with latency objectives, the default profile for the rest."""

    TYPE = "slo-aware-profile-handler"
    PARAMS = SloAwareProfileParams
    params: SloAwareProfileParams

    def __init__(self, name: str, params: SloAwareProfileParams | None, handle: Handle) -> None:
        super().__init__(name, params or SloAwareProfileParams(), handle)

    def validate_profiles(self, profile_names: Collection[str], where: str) -> None:
        """Raise ``ConfigError`` at ``<where>.parameters.<key>`` for a profile the config lacks."""
        for key, profile in (("sloProfile", self.params.slo_profile), ("defaultProfile", self.params.default_profile)):
            if profile not in profile_names:
                known = ", ".join(sorted(profile_names)) or "none"
                raise ConfigError(f"{where}.parameters.{key}",
                                  f"no scheduling profile named {bounded_repr(profile)} (profiles: {known})")

    def profile_for(self, request: InferenceRequest) -> str:
        return self.params.slo_profile if has_objectives(request) else self.params.default_profile

    def pick_profiles(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        profiles: Mapping[str, Profile],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, Profile]:
        if results:
            return {}
        name = self.profile_for(request)
        profile = profiles.get(name)
        if profile is None:  # validate_profiles rules this out for loaded configs
            raise InternalError(f"scheduling profile {bounded_repr(name)} is not configured")
        return {name: profile}

    def process_results(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        results: dict[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        name = self.profile_for(request)
        result = results.get(name)
        if result is None or not result.endpoints:
            raise ResourceExhausted(
                f"failed to find target endpoint: no endpoint passed the filters of profile {name!r}")
        return SchedulingResult(profile_results=results, primary_profile=name)
