"""Scheduling extension points: profile handler, filter, scorer, picker.

Contracts (the scheduler enforces the parts marked *framework*):

- ``Filter.filter`` returns the subset of ``endpoints`` that may serve the request, in any
  order. Returning an empty list ends the profile with "no endpoints available"
  (*framework*: the profile fails, the request gets 429). Must not mutate its input.
- ``Scorer.score`` returns one float per endpoint, aligned with ``endpoints``. Values
  outside [0, 1] are clamped and NaN counts as 0 (*framework*, in one place:
  ``SchedulerProfile``). The profile sums ``score * weight`` over its scorers.
- ``Picker.pick`` chooses from scored endpoints (best first is a convention, not a rule)
  and returns them in preference order; the first is the primary destination.
- ``ProfileHandler.pick_profiles`` is called in a loop: given results so far, it returns
  the profiles to run next, or an empty mapping to stop. ``process_results`` then names
  the primary profile. Handlers see profiles only as ``Profile`` (a name and ``run``);
  the in-tree implementation is ``epp.scheduling.profile.SchedulerProfile``.

All four are synchronous and pure over the endpoint snapshot: any I/O belongs to a data
source or a data producer, so a scheduling cycle's cost is plain CPU and measurable.
An exception escaping a plugin fails the request with 500 and is logged.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from epp.datalayer.endpoint import Endpoint
    from epp.requests.types import InferenceRequest

__all__ = [
    "CycleState",
    "Filter",
    "Picker",
    "Profile",
    "ProfileHandler",
    "ProfileRunResult",
    "ScoredEndpoint",
    "Scorer",
    "ScorerCategory",
    "SchedulingResult",
    "SchedulingTrace",
]

T = TypeVar("T")


class CycleState(dict[str, Any]):
    """Per-request scratch data shared by plugins, keyed by constants each plugin owns.

    Data producers write here before scheduling (e.g. prefix match counts per endpoint);
    filters and scorers read it. ``read`` fails loudly when a producer did not run.
    """

    def read(self, key: str, cls: type[T]) -> T:
        try:
            value = self[key]
        except KeyError:
            raise KeyError(f"cycle state has no {key!r}: its data producer did not run") from None
        if not isinstance(value, cls):
            raise TypeError(f"cycle state {key!r} is {type(value).__name__}, expected {cls.__name__}")
        return value


class ScorerCategory(enum.StrEnum):
    """What a scorer optimises; informational (GIE reports it, profiles may balance it)."""

    AFFINITY = "Affinity"  # prefers endpoints that already hold state for the request
    DISTRIBUTION = "Distribution"  # spreads load
    BALANCE = "Balance"  # mixes the two


@dataclass(slots=True)
class ScoredEndpoint:
    endpoint: Endpoint
    score: float


@dataclass(slots=True)
class ProfileRunResult:
    """Endpoints a profile chose, in preference order (first = primary)."""

    endpoints: list[Endpoint]


@dataclass(slots=True)
class SchedulingResult:
    profile_results: dict[str, ProfileRunResult | None]
    primary_profile: str
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def primary(self) -> ProfileRunResult:
        result = self.profile_results.get(self.primary_profile)
        if result is None or not result.endpoints:
            raise LookupError(f"primary profile {self.primary_profile!r} produced no endpoint")
        return result


@runtime_checkable
class Filter(Protocol):
    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]
    ) -> list[Endpoint]: ...


@runtime_checkable
class Scorer(Protocol):
    def category(self) -> ScorerCategory: ...

    def score(
        self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]
    ) -> Sequence[float]: ...


@runtime_checkable
class Picker(Protocol):
    def pick(
        self, cycle: CycleState, request: InferenceRequest, scored: list[ScoredEndpoint]
    ) -> ProfileRunResult: ...


class SchedulingTrace(Protocol):
    """Receives what each plugin of a profile decided (``epp.scheduling.trace.DecisionTrace``)."""

    def filtered(self, profile: str, plugin: str, kept: list[str]) -> None: ...

    def scored(self, profile: str, plugin: str, weight: float, endpoints: list[str], scores: list[float]) -> None: ...

    def picked(self, profile: str, endpoints: list[str]) -> None: ...


class Profile(Protocol):
    """A named scheduling profile, as profile handlers see it.

    ``run`` returns the endpoints the profile chose, best first. When no endpoint is left
    it either raises ``epp.scheduling.profile.NoEndpointsAvailable`` (the scheduler records
    no result) or returns an empty ``ProfileRunResult``.
    """

    @property
    def name(self) -> str: ...

    def run(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        endpoints: list[Endpoint],
        trace: SchedulingTrace | None = None,
    ) -> ProfileRunResult: ...


@runtime_checkable
class ProfileHandler(Protocol):
    def pick_profiles(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        profiles: Mapping[str, Profile],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, Profile]: ...

    def process_results(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        results: dict[str, ProfileRunResult | None],
    ) -> SchedulingResult: ...
