"""The two interfaces between the engine and a metrics page.

* ``EngineView``: what a page reads live at render time (queue lengths, KV usage, adapters).
* ``MetricsSink``: what the engine and the HTTP layer report as things happen. The engine
  calls it from its step loop, so every method must be cheap and must not await or raise.

``VllmMetrics`` and ``SglangMetrics`` implement ``MetricsSink`` with each server's names.
"""

from __future__ import annotations

from typing import Protocol

from epp.sim.request import SimRequest
from epp.sim.scheduler import StepPlan

__all__ = ["EngineView", "MetricsSink"]


class EngineView(Protocol):
    """Live engine state a metrics page shows as gauges."""

    @property
    def num_running(self) -> int: ...

    @property
    def num_waiting(self) -> int: ...

    def kv_usage(self) -> float: ...

    def kv_used_blocks(self) -> int: ...

    def running_loras(self) -> list[str]: ...

    def waiting_loras(self) -> list[str]: ...

    def scheduled_loras(self) -> list[str]: ...


class MetricsSink(Protocol):
    """Event hooks plus the page itself."""

    content_type: str

    def on_step(self, plan: StepPlan, now: float) -> None:
        """A step finished; ``plan`` says what it computed."""

    def on_token(self, req: SimRequest, now: float) -> None:
        """``req`` received a token at ``now`` (its first one when ``req.first_token == now``)."""

    def on_finished(self, req: SimRequest, reason: str, now: float) -> None:
        """``req`` ended; ``reason`` is a vLLM finish reason (stop, length, abort, error)."""

    def on_http(self, handler: str, method: str, status: int, request_bytes: int,
                response_bytes: int, seconds: float) -> None:
        """An HTTP request to an instrumented route completed."""

    def render(self) -> bytes:
        """The whole page, in the Prometheus text format."""
        ...
