"""The admission step alone, in process: CPU per request when nothing waits.

The end-to-end CPU figure of ``run.py`` carries about ±100 µs of noise per pair of runs
on a shared machine; this one isolates what the ``flowControl`` gate adds to a request
that passes straight through: building its ``FlowControlRequest`` and one
``FlowController.enqueue_and_wait`` (capacity checks, the saturation reading, the
workload registry, the queue metrics). The controller is the one ``epp serve`` builds
from the same config (``PickerServer.build``), on a pool of two endpoints whose metrics
are kept fresh and idle, so the detector reads 0 and every request takes the fast path.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from benchmarks.timing import median_cpu_us_async
from epp.datalayer.endpoint import Metrics
from epp.flowcontrol.types import FlowControlRequest, FlowKey, WorkloadContext
from epp.request_context import RequestContext
from epp.server.app import PickerServer, ServeOptions

__all__ = ["admission_cpu_us", "director_cpu_us"]

_FLOWS = tuple(itertools.product(("chat-a", "chat-b", "flood"), (100, -1)))


def admission_cpu_us(config_text: str, batches: int = 7, calls: int = 2000) -> float:
    """Median CPU µs per admitted request (``benchmarks.timing.median_cpu_us_async``)."""
    server = PickerServer(ServeOptions(config_text=config_text, endpoints="127.0.0.1:1,127.0.0.1:2"))
    server.build()
    controller = server.flow_controller
    if controller is None:
        raise ValueError("the config does not turn flow control on")
    endpoints = server.pool.endpoints()
    for endpoint in endpoints:
        endpoint.metrics = Metrics(update_time=time.monotonic())
    detector = server.config.saturation_detector if server.config is not None else None
    if detector is None or detector.saturation(endpoints, time.monotonic()) >= 1.0:
        # A request that queued would wait for a dispatch pass nobody runs here.
        raise RuntimeError("the pool reads saturated: the fast path cannot be measured")
    serial = itertools.count()

    async def admit() -> None:
        n = next(serial)
        if n % 500 == 0:  # keep the scrape fresh, as the collector would
            for endpoint in endpoints:
                endpoint.metrics = Metrics(update_time=time.monotonic())
        fairness, priority = _FLOWS[n % len(_FLOWS)]
        await controller.enqueue_and_wait(FlowControlRequest(
            request_id=f"r{n}", flow=FlowKey(fairness, priority), size_bytes=300, received_at=time.monotonic(),
            workload=WorkloadContext(fairness, 3), model="m", target_model="m"))

    return asyncio.run(median_cpu_us_async(admit, batches, calls))


_BODY = b'{"model":"m","prompt":"a short prompt that nobody waits for","max_tokens":4}'
_HEADERS = {":path": "/v1/completions", ":method": "POST", "content-type": "application/json",
            "x-gateway-inference-fairness-id": "chat-a", "x-workload-id": "chat-a"}


def director_cpu_us(config_text: str | None, batches: int = 7, calls: int = 2000) -> float:
    """Median CPU µs per request through the whole director (``handle_request`` and ``finish``).

    Run for the config with and without its ``flowControl`` gate, the difference is what the
    gate costs a request that does not wait, everything included (the workload and SLO
    headers, the flow-control request, the queue's metrics), without the ±100 µs noise of
    the end-to-end pairs. Dispatch accounting is off and the pool idle and fresh, so
    nothing ever reads as saturated here (no scrapes would settle the estimates).
    """
    server = PickerServer(ServeOptions(config_text=config_text, endpoints="127.0.0.1:1,127.0.0.1:2",
                                       account_dispatches=False))
    server.build()
    director = server.director
    assert director is not None
    endpoints = server.pool.endpoints()
    serial = itertools.count()

    async def route() -> None:
        n = next(serial)
        if n % 500 == 0:
            for endpoint in endpoints:
                endpoint.metrics = Metrics(update_time=time.monotonic())
        ctx = RequestContext(f"r{n}")
        await director.handle_request(ctx, _HEADERS, _BODY, None)
        director.finish(ctx, completed=True)

    return asyncio.run(median_cpu_us_async(route, batches, calls))
