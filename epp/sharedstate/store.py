"""The connection to the shared store (Redis) and whether it currently works.

Two clients on one address: ``commands`` for short commands with a tight timeout, and
``reader`` for blocking stream reads, whose socket timeout must outlast the block. Neither
retries inside redis-py: a failed command is reported at once (``failed``), the caller backs
off (``Backoff``) and the next command reconnects. Health is the result of the latest command
of any loop: one success says connected, one failure says degraded since then, with the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from epp.sharedstate.address import StoreAddress

__all__ = ["STORE_ERRORS", "Backoff", "StateStore", "StoreHealth", "close_bounded", "every", "stop_if_cancelled"]

# What a lost, slow or refusing store raises through redis-py.
STORE_ERRORS = (RedisError, OSError, TimeoutError)


def stop_if_cancelled() -> None:
    """Raise ``CancelledError`` when this task was cancelled; each loop calls it once per turn.

    redis-py can swallow a cancellation that arrives mid-command (observed with redis 8.1:
    the task stayed "cancelling" and looped on), which would keep a stopping replica's
    TaskGroup waiting forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def every(period: float, step: Callable[[], Awaitable[None]], store: StateStore,
                on_failure: Callable[[], None] = lambda: None) -> None:
    """Run ``step`` every ``period`` until cancelled; a store error is recorded, ``on_failure``
    called, and the next try waits the longer of the period and the backoff."""
    backoff = store.backoff()
    while True:
        stop_if_cancelled()
        try:
            await step()
        except STORE_ERRORS as e:
            store.failed(e)
            on_failure()
            await asyncio.sleep(max(period, backoff.failure()))
            continue
        backoff.success()
        await asyncio.sleep(period)


async def close_bounded(closing: Awaitable[object], timeout: float) -> None:
    """Close a client or subscription, giving up after ``timeout``: a connection cut mid-read
    (by cancellation or a dead store) can otherwise keep a close waiting forever."""
    with contextlib.suppress(*STORE_ERRORS, asyncio.TimeoutError):
        await asyncio.wait_for(closing, timeout)


@dataclass(frozen=True, slots=True)
class StoreHealth:
    connected: bool
    since: float  # wall-clock seconds of the last change
    last_error: str | None = None


class Backoff:
    """Delays after consecutive failures: doubling from ``first`` up to ``cap``; a success resets it."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def failure(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay

    def success(self) -> None:
        self._next = self.first


class StateStore:
    def __init__(self, address: StoreAddress, *, timeout: float = 1.0, block: float = 0.5, backoff_max: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.address = address
        self.block = block
        self.timeout = timeout
        self.backoff_max = backoff_max
        self._clock = clock
        self.commands = self._client(address, timeout)
        self.reader = self._client(address, timeout + block)
        self._health = StoreHealth(False, clock(), "not connected yet")

    @staticmethod
    def _client(address: StoreAddress, timeout: float) -> Redis:
        return Redis(host=address.host, port=address.port, db=address.db, username=address.username,
                     password=address.password, socket_timeout=timeout, socket_connect_timeout=timeout,
                     retry=Retry(NoBackoff(), 0), client_name="epp-shared-state")

    def backoff(self) -> Backoff:
        """A fresh backoff for one loop: retries start fast and slow down to ``backoff_max``."""
        return Backoff(min(0.1, self.backoff_max), self.backoff_max)

    @property
    def health(self) -> StoreHealth:
        return self._health

    def succeeded(self) -> None:
        if not self._health.connected:
            self._health = StoreHealth(True, self._clock())

    def failed(self, error: BaseException) -> None:
        message = f"{type(error).__name__}: {error}"[:300]
        if self._health.connected or self._health.last_error != message:
            since = self._health.since if not self._health.connected else self._clock()
            self._health = StoreHealth(False, since, message)

    def subscriber(self) -> Redis:
        """A client of its own for one pub/sub subscription, so a cut subscription cannot hold up the others."""
        return self._client(self.address, self.timeout + self.block)

    async def aclose(self) -> None:
        for client in (self.commands, self.reader):
            await close_bounded(client.aclose(), self.timeout)
