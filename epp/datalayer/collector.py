"""The background collector: one periodic task per endpoint feeds its data sources.

Each tick (``interval``, default 50 ms as in the Go EPP) the task polls every bound data
source with a timeout and pushes the payload to that source's extractors. The tasks run
in one ``TaskGroup`` owned by ``run()``; endpoints added to the pool get a task,
removed ones have theirs cancelled.

Failure handling: a failed scrape leaves the endpoint's metrics untouched (their
``update_time`` ages). Failures and recoveries are logged once per transition, not per
tick. After ``unready_after`` consecutive failed ticks the endpoint is marked not ready,
so new requests avoid a server that stopped answering; one success makes it ready again.
Every failed fetch and every extractor that raises is reported to ``on_scrape_error`` with
the endpoint's name (the server counts them in ``epp_endpoint_scrape_errors_total``; a
callback keeps this layer free of metrics imports).

Freshness (``has_fresh_data``): the server's readiness asks whether any endpoint had a
successful scrape within ``freshness_bound``; a dead or stuck collector stops producing
successes, so readiness falls instead of the picker routing on frozen numbers.

Idle backoff (``idle_interval``): rendering ``/metrics`` costs the model server's API
process CPU (real vLLM 0.32 on CPU, a 53 KB page: about 4 ms of CPU and 9 ms wall per
scrape, so every 50 ms takes 8% of a core, 64x its idle CPU, from the process that also
serves requests; ``benchmarks/scrape/vllm_cost.py``). An endpoint whose
last scrape succeeded and shows nothing waiting or running, with no dispatch from this
picker still pending on it, is scraped every ``idle_interval`` instead. While it sleeps
the collector looks at it every ``interval`` (no request to the server): a dispatch
(``epp.datalayer.dispatch``) makes it busy, and its scrape then comes within one normal
interval, as without the backoff. A failed scrape also ends the backoff, so a dead server
is marked not ready after ``unready_after`` normal ticks. What it costs: load put on an
idle server by someone else (another picker, a client bypassing the gateway) is seen up to
``idle_interval`` late, and with ``--no-dispatch-accounting`` so are this picker's own
requests to it.

Dispatch estimates (``epp.datalayer.dispatch``): each fetch's start time is set on the
endpoint while its page is extracted, so a page fetched from before a dispatch keeps that
dispatch's estimate on top; every tick, success or not, ends by expiring the dispatches no
page settled within ``estimate_ttl``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from epp.datalayer.endpoint import Endpoint
from epp.datalayer.pool import EndpointPool
from epp.framework.datalayer import DataSource, Extractor

__all__ = ["Collector", "EndpointHealth", "SourceBinding", "freshness_bound"]

log = logging.getLogger(__name__)

# The floor of the freshness bound: a busy event loop or a GC pause must not flip readiness.
_MIN_FRESHNESS = 2.0


def freshness_bound(interval: float, timeout: float) -> float:
    """How old the newest successful scrape may be before no endpoint counts as fresh.

    Three ticks that each hit the timeout (a late tick plus two slow ones) still leave
    data fresh; below 2 s, scheduling jitter alone could flap readiness. ``interval`` is
    the one the endpoint is scraped at now (the idle one while it is idle).
    """
    return max(3 * interval + timeout, _MIN_FRESHNESS)


@dataclass(frozen=True, slots=True)
class SourceBinding:
    source: DataSource
    extractors: tuple[Extractor, ...]


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    """Collector's view of one endpoint, for debug endpoints and tests."""

    name: str
    consecutive_failures: int
    last_success: float  # time.monotonic(); 0.0 = never
    last_error: str
    scrape_interval: float = 0.0  # what its next scrape waits: the idle interval while it is idle


class _State:
    __slots__ = ("failures", "last_success", "last_error", "extract_errors", "interval", "freshness_bound")

    def __init__(self, interval: float = 0.05, freshness: float = _MIN_FRESHNESS) -> None:
        # The interval this endpoint's next scrape is due after (longer while idle), and its bound.
        self.interval = interval
        self.freshness_bound = freshness
        self.failures = 0
        self.last_success = 0.0
        self.last_error = ""
        self.extract_errors: dict[str, str] = {}


class Collector:
    def __init__(
        self,
        pool: EndpointPool,
        bindings: Sequence[SourceBinding],
        interval: float = 0.05,
        timeout: float = 1.0,
        unready_after: int = 3,
        estimate_ttl: float | None = None,
        idle_interval: float | None = None,
        on_scrape_error: Callable[[str], None] | None = None,
        on_scraped: Callable[[], None] | None = None,
    ) -> None:
        self.pool = pool
        self.bindings = tuple(bindings)
        self.interval = interval
        self.timeout = timeout
        self.unready_after = unready_after
        # None or anything not above the interval: no backoff, every endpoint every interval.
        self.idle_interval = max(interval, idle_interval or interval)
        # A dispatch waits at most one interval (plus one for a late tick) for a fetch to
        # start after it, and that fetch takes at most the timeout: any older estimate is one
        # no page will ever settle.
        self.estimate_ttl = 2 * interval + timeout if estimate_ttl is None else estimate_ttl
        self.on_scrape_error = on_scrape_error
        # Called after every scrape of an endpoint (the flow controller re-reads saturation).
        self.on_scraped = on_scraped
        self.freshness_bound = freshness_bound(interval, timeout)
        self.idle_freshness_bound = freshness_bound(self.idle_interval, timeout)
        self._group: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._states: dict[str, _State] = {}
        pool.add_listener(self)

    async def run(self) -> None:
        """Scrape until cancelled."""
        if not self.bindings:
            return
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for endpoint in self.pool.endpoints():
                    self.endpoint_added(endpoint)
                await asyncio.Future()  # cancelled at shutdown
        finally:
            self._group = None
            self._tasks.clear()

    def endpoint_added(self, endpoint: Endpoint) -> None:
        if self._group is None or endpoint.name in self._tasks:
            return
        endpoint.dispatch_ttl = self.estimate_ttl
        poll = self._poll(endpoint)
        try:
            self._tasks[endpoint.name] = self._group.create_task(poll, name=f"scrape {endpoint.name}")
        except RuntimeError:  # the group is shutting down: no new scrapes
            poll.close()
            return
        self._states[endpoint.name] = _State(self.interval, self.freshness_bound)

    def endpoint_restarted(self, endpoint: Endpoint) -> None:
        """The model server restarted: its scrape task (which is running the extractor that
        noticed) goes on; only plugins' per-endpoint state is dropped."""
        return None

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        task = self._tasks.pop(endpoint.name, None)
        if task is not None:
            task.cancel()
        self._states.pop(endpoint.name, None)

    def health(self) -> list[EndpointHealth]:
        return [EndpointHealth(name, s.failures, s.last_success, s.last_error, s.interval)
                for name, s in self._states.items()]

    def has_fresh_data(self, now: float | None = None) -> bool:
        """False only when scraping is configured, the pool has members and none of them
        had a successful scrape within its ``freshness_bound`` (including: none yet); an idle
        endpoint's bound follows ``idle_interval``."""
        if not self.bindings or not self.pool.endpoints():
            return True
        now = time.monotonic() if now is None else now
        return any(state.last_success > 0.0 and state.last_success >= now - state.freshness_bound
                   for state in self._states.values())

    def is_idle(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` may wait ``idle_interval`` for its next scrape: its last scrape
        succeeded and, with this picker's pending dispatches counted, nothing waits or runs."""
        state = self._states.get(endpoint.name)
        if state is None or state.failures or state.last_success == 0.0:
            return False
        metrics = endpoint.metrics
        return metrics.waiting_queue_size == 0 and metrics.running_requests_size == 0

    def _report_error(self, endpoint: Endpoint) -> None:
        if self.on_scrape_error is not None:
            try:
                self.on_scrape_error(endpoint.name)
            except Exception:  # noqa: BLE001 - counting must never break scraping
                log.exception("scrape error callback failed")

    async def _poll(self, endpoint: Endpoint) -> None:
        state = self._states[endpoint.name]
        # Spread endpoints over the interval so scrapes do not arrive in bursts.
        await asyncio.sleep(random.random() * self.interval)
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._tick(endpoint, state)
            except Exception:  # noqa: BLE001 - a bug in one tick must not stop every endpoint's scrapes
                log.exception("endpoint %s: collector tick failed", endpoint.name)
            await self._wait_for_next_tick(endpoint, state, started, loop)

    async def _wait_for_next_tick(self, endpoint: Endpoint, state: _State, started: float,
                                  loop: asyncio.AbstractEventLoop) -> None:
        """One interval after ``started``; while the endpoint stays idle, up to ``idle_interval``."""
        idle = self.idle_interval > self.interval and self.is_idle(endpoint)
        state.interval = self.idle_interval if idle else self.interval
        state.freshness_bound = self.idle_freshness_bound if idle else self.freshness_bound
        await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))
        if not idle:
            return
        # Looking costs no request to the server; a dispatch ends the wait within one interval.
        deadline = started + self.idle_interval
        while (remaining := deadline - loop.time()) > 0 and self.is_idle(endpoint):
            await asyncio.sleep(min(self.interval, remaining))
        # The bound stays the idle one until the wake-up scrape lands (the next wait sets it):
        # tightened now, a last success older than the normal bound would read as stale.
        state.interval = self.interval

    async def _tick(self, endpoint: Endpoint, state: _State) -> None:
        error = ""
        for binding in self.bindings:
            fetch_started = time.monotonic()
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that races with the scrape finishing (bpo-42130), which
                # left removed endpoints scraped forever and hung shutdown.
                async with asyncio.timeout(self.timeout):
                    data = await binding.source.collect(endpoint)
            except TimeoutError:
                error = f"timed out after {self.timeout:g}s"
                self._report_error(endpoint)
                continue
            except Exception as exc:  # noqa: BLE001 - any source failure is a failed scrape
                error = str(exc) or type(exc).__name__
                self._report_error(endpoint)
                continue
            endpoint.fetch_started = fetch_started
            try:
                for extractor in binding.extractors:
                    self._extract(extractor, data, endpoint, state)
            finally:
                endpoint.fetch_started = math.inf
        endpoint.expire_dispatches(time.monotonic())
        if error:
            self._failed(endpoint, state, error)
        else:
            self._succeeded(endpoint, state)
        if self.on_scraped is not None:
            self.on_scraped()

    def _extract(self, extractor: Extractor, data: object, endpoint: Endpoint, state: _State) -> None:
        key = str(getattr(extractor, "typed_name", extractor))
        try:
            extractor.extract(data, endpoint)
        except Exception as exc:  # noqa: BLE001 - one extractor must not stop the others
            message = str(exc)
            self._report_error(endpoint)
            if state.extract_errors.get(key) != message:
                log.warning("endpoint %s: extractor %s: %s", endpoint.name, key, message)
                state.extract_errors[key] = message
        else:
            if state.extract_errors.pop(key, None) is not None:
                log.info("endpoint %s: extractor %s recovered", endpoint.name, key)

    def _failed(self, endpoint: Endpoint, state: _State, error: str) -> None:
        state.failures += 1
        if state.failures == 1:
            log.warning("endpoint %s: scrape failed: %s", endpoint.name, error)
        state.last_error = error
        if state.failures == self.unready_after and endpoint.ready:
            log.warning("endpoint %s: not ready after %d failed scrapes", endpoint.name, state.failures)
            self.pool.set_ready(endpoint, False)

    def _succeeded(self, endpoint: Endpoint, state: _State) -> None:
        if state.failures:
            log.info("endpoint %s: scrape recovered after %d failures", endpoint.name, state.failures)
        state.failures = 0
        state.last_error = ""
        state.last_success = time.monotonic()
        if not endpoint.ready:
            self.pool.set_ready(endpoint, True)
