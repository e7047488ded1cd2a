"""Fault modes a test can switch one replica into (``POST /sim/fault``).

``FaultMode`` is a closed set; the server reacts to each member as documented here:

* ``ok``: normal service.
* ``hang``: the replica accepts connections and requests (``/metrics`` and ``/health``
  too) but answers none until the mode goes back to ``ok``; its engine stops stepping, so
  streams in progress stall as well. Only ``/sim/*`` keeps answering.
* ``error``: every inference request (completions, chat) is answered with a vLLM-style
  500; the engine is left alone, other routes work.
* ``down``: the replica stops listening and closes its connections (clients get connection
  refused). Over HTTP this cannot be undone, since ``/sim/fault`` is gone too: restart
  the process, or, in-process, call ``SimServer.set_fault(FaultMode.OK)``, which binds the
  same address again with the engine state kept.
"""

from __future__ import annotations

import asyncio
import enum

__all__ = ["FaultMode", "FaultState"]


class FaultMode(enum.Enum):
    """How a replica misbehaves; see the module docstring for each member."""

    OK = "ok"
    HANG = "hang"
    ERROR = "error"
    DOWN = "down"


class FaultState:
    """The current mode plus an event hung requests wait on.

    Concurrency: event-loop owned; ``set`` wakes every request parked by ``hang``.
    """

    __slots__ = ("mode", "parked", "_released")

    def __init__(self) -> None:
        self.mode = FaultMode.OK
        self.parked = 0  # requests held by ``hang`` right now (tests wait on it, not on a sleep)
        self._released = asyncio.Event()
        self._released.set()

    def set(self, mode: FaultMode) -> None:
        self.mode = mode
        if mode is FaultMode.HANG:
            self._released.clear()
        else:
            self._released.set()

    async def wait_released(self) -> None:
        """Block while the mode is ``hang``."""
        if self.mode is not FaultMode.HANG:
            return
        self.parked += 1
        try:
            while self.mode is FaultMode.HANG:
                await self._released.wait()
        finally:
            self.parked -= 1
