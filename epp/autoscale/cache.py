"""A bounded TTL cache of query results, one per metrics source.

Keys are ``(query name, sorted (param, value) pairs)``: tuples, not joined strings, so a
value holding ``,`` or ``=`` can never make two keys equal. An entry is fresh while
``clock() - stored_at < ttl`` (30 s by default) and is gone from ``get`` once that age is
reached, whether or not the sweep has run; ``expire`` (or the ``run_expiry`` loop) only
frees the memory. When ``max_entries`` is exceeded the entry stored longest ago (a
re-store counts as new) is evicted.

The cache stores whatever it is given; the sources store only successful results, so an
error is never served from the cache as if it were a value (see ``sources``).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

__all__ = ["DEFAULT_MAX_ENTRIES", "DEFAULT_TTL", "CacheKey", "TTLCache", "cache_key"]

DEFAULT_TTL = 30.0
DEFAULT_MAX_ENTRIES = 4096

CacheKey = tuple[str, tuple[tuple[str, str], ...]]
V = TypeVar("V")


def cache_key(name: str, params: Mapping[str, str]) -> CacheKey:
    return name, tuple(sorted(params.items()))


class TTLCache(Generic[V]):
    def __init__(self, ttl: float = DEFAULT_TTL, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, not {ttl!r}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries!r}")
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[CacheKey, tuple[float, V]] = OrderedDict()

    def put(self, name: str, params: Mapping[str, str], value: V) -> None:
        key = cache_key(name, params)
        self._entries.pop(key, None)
        self._entries[key] = (self._clock(), value)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, name: str, params: Mapping[str, str]) -> V | None:
        """The value stored for ``(name, params)`` if it is younger than the TTL, else ``None``."""
        key = cache_key(name, params)
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, value = entry
        if self._clock() - stored_at >= self.ttl:
            del self._entries[key]
            return None
        return value

    def expire(self) -> int:
        """Drop every entry that has reached the TTL; return how many were dropped."""
        now = self._clock()
        stale = [key for key, (stored_at, _) in self._entries.items() if now - stored_at >= self.ttl]
        for key in stale:
            del self._entries[key]
        return len(stale)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    async def run_expiry(self, interval: float = 1.0) -> None:
        """Sweep every ``interval`` seconds until cancelled."""
        if not interval > 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        while True:
            await asyncio.sleep(interval)
            self.expire()
