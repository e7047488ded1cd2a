"""Why a request went where it went: per-profile filter results and per-plugin scores.

A ``DecisionTrace`` is filled during one scheduling cycle when tracing is on; the
``DecisionLog`` keeps the most recent ones by request id (bounded) for
``GET /debug/decisions/<request-id>`` and logs each at DEBUG.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

__all__ = ["DecisionLog", "DecisionTrace"]

log = logging.getLogger("epp.decisions")


class DecisionTrace:
    __slots__ = ("request_id", "model", "candidates", "profiles", "destination")

    def __init__(self, request_id: str, model: str, candidates: list[str]) -> None:
        self.request_id = request_id
        self.model = model
        self.candidates = candidates
        self.profiles: dict[str, dict[str, Any]] = {}
        self.destination: list[str] = []

    def _profile(self, profile: str) -> dict[str, Any]:
        entry = self.profiles.get(profile)
        if entry is None:
            entry = self.profiles[profile] = {"filters": [], "scorers": [], "picked": []}
        return entry

    def filtered(self, profile: str, plugin: str, kept: list[str]) -> None:
        self._profile(profile)["filters"].append({"plugin": plugin, "kept": kept})

    def scored(self, profile: str, plugin: str, weight: float, endpoints: list[str], scores: list[float]) -> None:
        # Kept as two lists; the per-endpoint mapping is built only when someone reads it.
        self._profile(profile)["scorers"].append((plugin, weight, endpoints, scores))

    def picked(self, profile: str, endpoints: list[str]) -> None:
        self._profile(profile)["picked"] = endpoints

    def as_dict(self) -> dict[str, Any]:
        profiles = {}
        for name, entry in self.profiles.items():
            scorers = [{"plugin": plugin, "weight": weight, "scores": dict(zip(endpoints, scores, strict=True))}
                       for plugin, weight, endpoints, scores in entry["scorers"]]
            totals: dict[str, float] = {}
            for scorer in scorers:
                for ep, score in scorer["scores"].items():
                    totals[ep] = totals.get(ep, 0.0) + score * scorer["weight"]
            profiles[name] = {"filters": entry["filters"], "scorers": scorers, "picked": entry["picked"],
                              "totals": totals}
        return {"requestId": self.request_id, "model": self.model, "candidates": self.candidates,
                "profiles": profiles, "destination": self.destination}


class DecisionLog:
    """The last ``capacity`` decisions, by request id (oldest evicted first)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, DecisionTrace] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0 or log.isEnabledFor(logging.DEBUG)

    def record(self, trace: DecisionTrace) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("decision %s", trace.as_dict())
        if self.capacity <= 0:
            return
        self._entries[trace.request_id] = trace
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get(self, request_id: str) -> DecisionTrace | None:
        return self._entries.get(request_id)

    def recent(self, limit: int) -> list[DecisionTrace]:
        return list(self._entries.values())[-limit:][::-1]
