"""``single-profile-handler``: run the one profile once; it is the primary profile.

Its result is the scheduling result. When the profile's filters leave no endpoint the
request fails with 429 ("failed to find target endpoint"), as in the Go EPP. The config
loader adds this handler automatically when exactly one profile exists and no handler
is configured, and rejects it when more than one profile is configured.
"""

from __future__ import annotations

from collections.abc import Mapping

from epp.errors import ResourceExhausted
from epp.framework.plugin import BasePlugin
from epp.framework.scheduling import CycleState, Profile, ProfileRunResult, SchedulingResult
from epp.requests.types import InferenceRequest

__all__ = ["SingleProfileHandler"]


class SingleProfileHandler(BasePlugin):
    """Runs the single configured profile and makes it primary."""

    TYPE = "single-profile-handler"

    def pick_profiles(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        profiles: Mapping[str, Profile],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, Profile]:
        return {} if results else profiles

    def process_results(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        results: dict[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        (name, result), = results.items()
        if result is None or not result.endpoints:
            raise ResourceExhausted(
                f"failed to find target endpoint: no endpoint passed the filters of profile {name!r}")
        return SchedulingResult(profile_results=results, primary_profile=name)
