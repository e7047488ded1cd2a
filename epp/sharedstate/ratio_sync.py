"""Characters per token, agreed between picker replicas.

Each replica learns a model's characters per token from its own responses
(``epp.datalayer.token_ratio``), and the approximate prefix index hashes blocks of
``block tokens x that value`` bytes. Two replicas that settle on slightly different values
(2.31 vs 2.27: 296 vs 291-byte blocks) hash differently, and every record one shares is
useless to the other. So a value a replica adopts is written to one Redis hash
(``<namespace>:ratios``, model -> value), and every replica reads the hash each period and
uses what it holds: the last writer wins, and within a period every replica hashes alike.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from epp.sharedstate.store import StateStore, every

__all__ = ["RatioCounters", "RatioReplication", "SharesTokenRatios"]

log = logging.getLogger(__name__)

# Model names are bounded by the request limits (256 characters); a hash holds at most this
# many models, as the learner does (its LRU keeps 1,000).
_MAX_MODELS = 1000


@runtime_checkable
class SharesTokenRatios(Protocol):
    def adopted_ratios(self) -> dict[str, float]: ...

    def agree_ratio(self, model: str, chars_per_token: float) -> None: ...


@dataclass(slots=True)
class RatioCounters:
    rounds: int = 0
    published: int = 0
    agreed: int = 0
    bad_values: int = 0


class RatioReplication:
    def __init__(self, store: StateStore, namespace: str, producers: Mapping[str, SharesTokenRatios], *,
                 period: float = 1.0) -> None:
        self.store = store
        self.key = f"{namespace}:ratios"
        self.producers = dict(producers)
        self.period = period
        self.counters = RatioCounters()
        self._unpublished: dict[str, float] = {}

    async def sync_once(self) -> None:
        for producer in self.producers.values():
            self._unpublished.update(producer.adopted_ratios())
        pipe = self.store.commands.pipeline(transaction=False)
        if self._unpublished:
            pipe.hset(self.key, mapping={m: repr(v) for m, v in self._unpublished.items()})  # type: ignore[arg-type]
        pipe.hgetall(self.key)
        replies = await pipe.execute()
        self.store.succeeded()
        self.counters.published += len(self._unpublished)
        self._unpublished.clear()
        self.counters.rounds += 1
        self.apply(replies[-1])

    def apply(self, shared: Mapping[bytes, bytes]) -> None:
        for raw_model, raw_value in list(shared.items())[:_MAX_MODELS]:
            try:
                value = float(raw_value)
            except ValueError:
                value = math.nan
            if not math.isfinite(value) or len(raw_model) > 1024:
                self.counters.bad_values += 1
                continue
            model = raw_model.decode(errors="replace")
            for producer in self.producers.values():
                producer.agree_ratio(model, value)
            self.counters.agreed += 1

    async def sync_forever(self) -> None:
        if self.producers:
            await every(self.period, self.sync_once, self.store)
