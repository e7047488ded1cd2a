"""Why a request went where it went: per-profile filter results and per-plugin scores.

A ``DecisionTrace`` is filled during one scheduling cycle when tracing is on; the
``DecisionLog`` keeps the most recent ones (bounded) for ``GET /debug/decisions`` and
``GET /debug/decisions/<request-id>`` and logs each at DEBUG.

The request id and model come from the client, so a trace keeps bounded forms of them:
an id longer than ``MAX_ID_LENGTH`` characters becomes its first characters plus a hash
of the whole id (lookups with the full id still find it), a model name longer than
``MAX_MODEL_LENGTH`` is cut. Everything else in a trace (candidates, filter and scorer
results) is endpoint and plugin names from the pool and the configuration.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from typing import Any

__all__ = ["MAX_ID_LENGTH", "MAX_MODEL_LENGTH", "DecisionLog", "DecisionTrace", "trace_key"]

log = logging.getLogger("epp.decisions")

MAX_ID_LENGTH = 200
MAX_MODEL_LENGTH = 256
_DIGEST_BYTES = 16  # 32 hex characters: collisions of distinct long ids are not a practical concern


def trace_key(request_id: str) -> str:
    """The bounded form of a request id under which its trace is kept and found."""
    if len(request_id) <= MAX_ID_LENGTH:
        return request_id
    digest = hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=_DIGEST_BYTES).hexdigest()
    return f"{request_id[: MAX_ID_LENGTH - len(digest) - 1]}#{digest}"


def _bounded_model(model: str) -> str:
    return model if len(model) <= MAX_MODEL_LENGTH else model[: MAX_MODEL_LENGTH - 3] + "..."


class DecisionTrace:
    __slots__ = ("request_id", "model", "candidates", "profiles", "destination")

    def __init__(self, request_id: str, model: str, candidates: list[str]) -> None:
        self.request_id = trace_key(request_id)
        self.model = _bounded_model(model)
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
    """The last ``capacity`` decisions, oldest evicted first, findable by request id.

    Request ids come from clients (``x-request-id``) and need not be unique: a request
    that reuses an id does not replace the earlier request's trace. Every trace stays
    until ``capacity`` newer ones have been recorded, whatever its id. ``get`` returns the
    newest trace for an id, ``get_all`` every trace still held for it, newest first (for
    ``GET /debug/decisions/<id>``: the newest, plus how many others share the id).

    Memory: at most ``capacity`` traces; each holds a request id of at most
    ``MAX_ID_LENGTH`` characters and a model name of at most ``MAX_MODEL_LENGTH``, and the
    index holds one list per distinct id (the key is the trace's own id string).
    Measured at capacity 256 with over-long ids and model names: 0.26 MB (ASCII) and
    0.62 MB (4-byte characters), with three candidates; larger pools add their endpoint names.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._order: deque[DecisionTrace] = deque()
        # Lists, not deques: most ids have one trace, and a deque costs 760 bytes where a list costs 64.
        self._by_id: dict[str, list[DecisionTrace]] = {}

    @property
    def enabled(self) -> bool:
        return self.capacity > 0 or log.isEnabledFor(logging.DEBUG)

    def __len__(self) -> int:
        return len(self._order)

    def debug_sizes(self) -> dict[str, int]:
        return {"traces": len(self._order), "ids": len(self._by_id)}

    def record(self, trace: DecisionTrace) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("decision %s", trace.as_dict())
        if self.capacity <= 0:
            return
        self._order.append(trace)
        self._by_id.setdefault(trace.request_id, []).append(trace)
        while len(self._order) > self.capacity:
            oldest = self._order.popleft()
            same_id = self._by_id[oldest.request_id]
            del same_id[0]  # traces of one id are held in the order they were recorded
            if not same_id:
                del self._by_id[oldest.request_id]

    def get(self, request_id: str) -> DecisionTrace | None:
        """The newest trace recorded for this request id."""
        same_id = self._by_id.get(trace_key(request_id))
        return same_id[-1] if same_id else None

    def get_all(self, request_id: str) -> list[DecisionTrace]:
        """Every trace still held for this request id, newest first."""
        return list(reversed(self._by_id.get(trace_key(request_id), ())))

    def recent(self, limit: int) -> list[DecisionTrace]:
        if limit <= 0:
            return []
        return list(self._order)[-limit:][::-1]
