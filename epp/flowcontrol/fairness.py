"""Fairness policies: which flow of a priority band dispatches next.

- ``global-strict-fairness-policy``: one global order across the band's flows. The flow
  whose head has the lowest ``queue.rank(head, now)`` wins (ties: the earlier flow), so
  with FCFS queues the band behaves like a single FIFO queue.
- ``round-robin-fairness-policy``: the band's non-empty flows take turns. The cursor is the
  key of the flow served last plus the order the flows had then; flows are dropped when
  empty and re-appended when they come back, so the turn passes to the first flow that
  came after the last-served one in that order, else to the first newly appeared flow,
  else back to the start. Every backlogged flow therefore gets an equal share (±1) however
  other flows come and go.

Both are O(flows) per pick.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from epp.flowcontrol.types import FlowKey, FlowView
from epp.framework.plugin import BasePlugin, Handle

__all__ = ["GlobalStrictFairnessPolicy", "RoundRobinCursor", "RoundRobinFairnessPolicy"]


class GlobalStrictFairnessPolicy(BasePlugin):
    """Serves the flow whose head ranks first across the whole band."""

    TYPE = "global-strict-fairness-policy"

    def __init__(self, name: str, params: None, handle: Handle) -> None:
        super().__init__(name, params, handle)

    def new_band_state(self) -> object:
        return None

    def pick_flow(self, state: object, flows: Sequence[FlowView], now: float) -> FlowView | None:
        best: FlowView | None = None
        best_rank: tuple[float, ...] = ()
        for flow in flows:
            queue = flow.queue
            head = queue.peek(now)
            if head is None:
                continue
            rank = queue.rank(head, now)
            # Strict "<" keeps the earlier flow on ties.
            if best is None or rank < best_rank:
                best, best_rank = flow, rank
        return best


@dataclass(slots=True)
class RoundRobinCursor:
    """Per-band round-robin position: the flow served last and the flow order at that time."""

    last: FlowKey | None = None
    order: tuple[FlowKey, ...] = ()


class RoundRobinFairnessPolicy(BasePlugin):
    """Cycles through the band's non-empty flows, one dispatch each."""

    TYPE = "round-robin-fairness-policy"

    def __init__(self, name: str, params: None, handle: Handle) -> None:
        super().__init__(name, params, handle)

    def new_band_state(self) -> object:
        return RoundRobinCursor()

    def pick_flow(self, state: object, flows: Sequence[FlowView], now: float) -> FlowView | None:
        if not flows:
            return None
        cursor = state if isinstance(state, RoundRobinCursor) else RoundRobinCursor()
        chosen = self._next(cursor, flows)
        cursor.last = chosen.key
        cursor.order = tuple(flow.key for flow in flows)
        return chosen

    @staticmethod
    def _next(cursor: RoundRobinCursor, flows: Sequence[FlowView]) -> FlowView:
        last = cursor.last
        if last is None:
            return flows[0]
        # Positions are taken from the order at the last pick, not the current one: the
        # last-served flow may have emptied, been dropped and come back at the end since.
        # Survivors keep their relative order and newcomers are appended, so its successor
        # is the first flow that either came after it then or is new; else wrap around.
        previous = {key: position for position, key in enumerate(cursor.order)}
        last_position = previous.get(last, -1)
        for flow in flows:
            position = previous.get(flow.key)
            if position is None or position > last_position:
                return flow
        return flows[0]
