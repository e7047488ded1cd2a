"""The admin server's middleware chain, outermost first.

1. **metrics**: counts every admin request, ``epp_admin_requests_total{path,code}``, and
   times it, ``epp_admin_request_duration_seconds{path}``. ``path`` is the route template
   (``/debug/decisions/{request_id}``), or ``unmatched`` for a path no route has: a label
   taken from the raw path would let any client create series without bound. Outermost so
   that every answer, 401, 429 and 500 included, is counted; ``code="499"`` is a client
   that disconnected before the answer.
2. **API version**: ``X-API-Version`` on every response (``API_VERSION``, ``v1``). It
   versions the admin API's JSON contract (the field names of ``/debug/*`` and of the
   error shape), not the picker: the picker's release is in ``/debug/config``. It
   changes only when a field is removed or changes meaning; added fields keep ``v1``.
   There is no negotiation: one version is served.
3. **request id**: a client's ``X-Request-Id`` is kept if it is a UUID in canonical
   hyphenated form (echoed lower-case); anything else (absent, too long, not a UUID) is
   replaced by a fresh UUID4, so ids in the logs and error bodies are bounded and cannot
   smuggle text into a log line. Echoed on every response.
4. **panic recovery**: an exception escaping a handler becomes a JSON ``500``
   (``Internal``, retryable) carrying the request id, never a dropped connection; it is
   counted in ``epp_admin_panics_total{path}`` and logged with its traceback and request
   id at most once per ``panic_log_interval`` (a handler failing on every call must not
   flood the log; the rest are logged at debug, one line each). The body says nothing
   of the exception: its text could carry a path or a value that is not the client's to
   see. Expected errors (``ApiError``, aiohttp's 404/405) get the shared shape here too.
5. **auth** (``epp/server/auth.py``, only with ``--admin-token-file``): after the request
   id and recovery, so a ``401`` carries an id and a failing token-file read is a JSON
   500; and *before* the rate limit, so requests without the token are refused without
   spending the tokens operators and scrapers need (a scan of the port cannot starve
   ``/debug``). Guessing the token is not what the limiter is for: the token is compared
   in constant time and should be long and random.
6. **rate limit**: one token bucket for the server, ``rate`` requests a second with
   ``burst`` (100 and 200 by default). ``/healthz``, ``/readyz`` and ``/metrics`` are
   outside it: probes and scrapes must never be refused because someone polls
   ``/debug``. Limited responses carry ``X-RateLimit-Limit`` (the rate a second),
   ``X-RateLimit-Remaining`` (whole tokens left) and ``X-RateLimit-Reset`` (Unix time,
   rounded up, at which the bucket is full again); a refusal is ``429`` with
   ``Retry-After`` (seconds until a token is available, at least 1) and details
   ``{"limit", "burst"}``, counted in ``epp_admin_rate_limited_total``. Recovery sits
   outside it, as in the seed ("recover first to prevent token waste on panics").
7. **logging**: one debug line per request that reaches it (method, path, status,
   duration, request id) on the ``epp.admin`` logger. Requests refused by auth or the
   limiter do not reach it; the metrics count them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram

from epp.errors import ConfigError
from epp.server.apierrors import REQUEST_ID, ApiError, error_response, http_exception_response
from epp.server.auth import TokenFile, bearer_auth_middleware
from epp.server.ratelimit import TokenBucket

__all__ = ["API_VERSION", "UNLIMITED_PATHS", "AdminMetrics", "AdminSettings", "admin_middlewares", "route_template"]

log = logging.getLogger("epp.admin")

API_VERSION = "v1"
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminSettings:
    """``rate_limit=None`` turns the limiter off. Clocks are injectable for tests."""

    rate_limit: float | None = 100.0
    rate_burst: int = 200
    panic_log_interval: float = 10.0
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.rate_limit is not None and not (math.isfinite(self.rate_limit) and self.rate_limit > 0):
            raise ConfigError("--admin-rate-limit", "must be a positive number of requests per second",
                              self.rate_limit)
        if self.rate_burst < 1:
            raise ConfigError("--admin-rate-burst", "must be at least 1", self.rate_burst)


class AdminMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("epp_admin_requests_total", "Admin HTTP requests, by route template and status.",
                                ["path", "code"], registry=registry)
        self.duration = Histogram("epp_admin_request_duration_seconds", "Admin HTTP request duration.",
                                  ["path"], buckets=_DURATION_BUCKETS, registry=registry)
        self.panics = Counter("epp_admin_panics_total", "Admin handlers that raised (answered 500).",
                              ["path"], registry=registry)
        self.rate_limited = Counter("epp_admin_rate_limited_total", "Admin requests refused by the rate limit.",
                                    registry=registry)


# One set of series per registry: an app rebuilt on the same registry must not register twice.
_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, AdminMetrics] = weakref.WeakKeyDictionary()


def _admin_metrics(registry: CollectorRegistry) -> AdminMetrics:
    metrics = _METRICS.get(registry)
    if metrics is None:
        metrics = _METRICS[registry] = AdminMetrics(registry)
    return metrics


def route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


async def _respond(request: web.Request, handler: Handler, wall_clock: Callable[[], float]) -> web.StreamResponse:
    """The handler's response, expected errors written in the shared shape."""
    try:
        return await handler(request)
    except (ApiError, web.HTTPException) as exc:
        if isinstance(exc, web.HTTPException) and exc.status < 400:
            raise
        return http_exception_response(request, exc, wall_clock)


class _LogThrottle:
    """At most one full report per interval; counts what it held back."""

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self._interval = interval
        self._clock = clock
        self._next = -math.inf
        self.suppressed = 0

    def allow(self) -> bool:
        now = self._clock()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self._interval
        return True


def _metrics_middleware(metrics: AdminMetrics, clock: Callable[[], float]) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = clock()
        status = 500  # what the client sees if something escapes every layer below
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away before the answer (nginx's code for it), not a server error
            raise
        finally:
            path = route_template(request)
            metrics.requests.labels(path, str(status)).inc()
            metrics.duration.labels(path).observe(max(0.0, clock() - start))

    return middleware


@web.middleware
async def _version_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers["X-API-Version"] = API_VERSION
    return response


@web.middleware
async def _request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    offered = request.headers.get("X-Request-Id", "")
    request_id = offered.lower() if _UUID.match(offered) else str(uuid.uuid4())
    request[REQUEST_ID] = request_id
    response = await handler(request)
    response.headers["X-Request-Id"] = request_id
    return response


def _recovery_middleware(metrics: AdminMetrics, settings: AdminSettings) -> Middleware:
    throttle = _LogThrottle(settings.panic_log_interval, settings.clock)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await _respond(request, handler, settings.wall_clock)
        except web.HTTPException:
            raise  # a redirect: not an error
        except Exception:
            path = route_template(request)
            metrics.panics.labels(path).inc()
            request_id = request.get(REQUEST_ID)
            if throttle.allow():
                held_back, throttle.suppressed = throttle.suppressed, 0
                log.exception("admin handler for %s failed (request id %s; %d similar failures not logged in full "
                              "since the last report)", path, request_id, held_back)
            else:
                log.debug("admin handler for %s failed (request id %s)", path, request_id)
            return error_response(request, 500, "the admin handler failed; the picker's log has the details under "
                                  "this request id", wall_clock=settings.wall_clock)

    return middleware


def _rate_limit_middleware(metrics: AdminMetrics, settings: AdminSettings, rate: float) -> Middleware:
    bucket = TokenBucket(rate, settings.rate_burst, settings.clock)
    limit = f"{rate:g}"

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in UNLIMITED_PATHS:
            return await handler(request)
        decision = bucket.acquire()
        headers = {"X-RateLimit-Limit": limit, "X-RateLimit-Remaining": str(decision.remaining),
                   "X-RateLimit-Reset": str(math.ceil(settings.wall_clock() + decision.until_full))}
        if not decision.allowed:
            metrics.rate_limited.inc()
            headers["Retry-After"] = str(max(1, math.ceil(decision.retry_after)))
            return error_response(request, 429, f"more than {limit} admin requests a second; retry later",
                                  {"limit": rate, "burst": settings.rate_burst}, headers, settings.wall_clock)
        response = await handler(request)
        response.headers.update(headers)
        return response

    return middleware


def _logging_middleware(settings: AdminSettings) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = settings.clock()
        response = await _respond(request, handler, settings.wall_clock)
        # The raw path as sent (still percent-encoded, so no line breaks), bounded.
        log.debug("admin %s %s -> %d in %.1f ms (request id %s)", request.method, request.raw_path[:200],
                  response.status, (settings.clock() - start) * 1000, request.get(REQUEST_ID))
        return response

    return middleware


def admin_middlewares(registry: CollectorRegistry, settings: AdminSettings,
                      token: TokenFile | None = None) -> list[Middleware]:
    """The chain for ``web.Application(middlewares=...)`` (aiohttp runs the first outermost)."""
    metrics = _admin_metrics(registry)
    chain: list[Middleware] = [_metrics_middleware(metrics, settings.clock), _version_middleware,
                               _request_id_middleware, _recovery_middleware(metrics, settings)]
    if token is not None:
        chain.append(bearer_auth_middleware(token, settings.wall_clock))
    if settings.rate_limit is not None:
        chain.append(_rate_limit_middleware(metrics, settings, settings.rate_limit))
    chain.append(_logging_middleware(settings))
    return chain
