"""The scheduler: asks the profile handler which profiles to run until it says stop."""

from __future__ import annotations

from collections.abc import Mapping

from epp.datalayer.endpoint import Endpoint
from epp.framework.scheduling import (
    CycleState,
    Profile,
    ProfileHandler,
    ProfileRunResult,
    SchedulingResult,
    SchedulingTrace,
)
from epp.requests.types import InferenceRequest
from epp.scheduling.profile import NoEndpointsAvailable

__all__ = ["Scheduler"]


class Scheduler:
    def __init__(self, handler: ProfileHandler, profiles: Mapping[str, Profile]) -> None:
        self.handler = handler
        self.profiles = dict(profiles)

    def schedule(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        candidates: list[Endpoint],
        trace: SchedulingTrace | None = None,
    ) -> SchedulingResult:
        """Run profiles; the handler's ``process_results`` decides success or raises."""
        results: dict[str, ProfileRunResult | None] = {}
        while True:
            chosen = self.handler.pick_profiles(cycle, request, self.profiles, results)
            # A handler that names only profiles already run would loop forever.
            pending = {name: p for name, p in chosen.items() if name not in results}
            if not pending:
                break
            for name, profile in pending.items():
                try:
                    results[name] = profile.run(cycle, request, candidates, trace)
                except NoEndpointsAvailable:
                    results[name] = None
        return self.handler.process_results(cycle, request, results)
