"""Waiting in tests for something that happens on its own time (a scrape, a dispatch, a reload)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

__all__ = ["eventually"]


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, what: str = "condition",
                     interval: float = 0.01) -> None:
    """Poll ``check`` (plain or async) until it is true; ``AssertionError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(interval)
