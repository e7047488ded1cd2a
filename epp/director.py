"""The director: the request lifecycle, in one place and in this order.

1. parse (parser plugin; 400 on bad input)  2. model-name rewrite
3. admission (pass-through until flow control lands)  4. candidates (pool ∩ subset hint; 503)
5. prepare data (data producers)  6. admitter plugins  7. schedule (profiles; 429 when
all filtered out)  8. pre-request plugins  9. repackage (new body only if the model changed)

Then, per response: response-received → response-streaming (per chunk) →
response-complete (exactly once, also when the stream ends early).

The director knows nothing of gRPC or Envoy: the ext_proc server hands it headers and
bytes and turns its ``Decision`` or ``PickerError`` into protocol messages.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter

import orjson

from epp.config.loader import PickerConfig
from epp.datalayer.dispatch import account_dispatch
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.pool import EndpointPool
from epp.datalayer.subset import subset_candidates
from epp.errors import InternalError, PickerError, ServiceUnavailable
from epp.framework.attributes import prefix_match
from epp.framework.scheduling import CycleState, SchedulingResult
from epp.hookerrors import HookErrors
from epp.metrics import PickerMetrics
from epp.request_context import RequestContext
from epp.requests.types import InferenceRequest
from epp.scheduling.trace import DecisionLog, DecisionTrace

__all__ = ["Decision", "Director", "rewrite_model_name"]

log = logging.getLogger(__name__)

FAIRNESS_ID_HEADER = "x-gateway-inference-fairness-id"
OBJECTIVE_HEADER = "x-gateway-inference-objective"
MODEL_REWRITE_HEADER = "x-gateway-model-name-rewrite"
DEFAULT_FAIRNESS_ID = "default-flow"


@dataclass(slots=True)
class Decision:
    """Where to send the request, and the body to send when it changed."""

    destinations: list[str]  # "ip:port" of each chosen endpoint, primary first
    body: bytes | None  # None: forward the original bytes


class Director:
    def __init__(
        self,
        pool: EndpointPool,
        config: PickerConfig,
        metrics: PickerMetrics | None = None,
        rng: random.Random | None = None,
        decisions: DecisionLog | None = None,
        honor_subset_hint: bool = True,
        account_dispatches: bool = True,
    ) -> None:
        self.pool = pool
        self.config = config
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.decisions = decisions or DecisionLog(0)
        self.honor_subset_hint = honor_subset_hint
        self.account_dispatches = account_dispatches
        self._errors = HookErrors()

    # --- request path -------------------------------------------------------------

    def candidates(self, subset: Sequence[str] | None) -> list[Endpoint]:
        endpoints: Sequence[Endpoint] = self.pool.endpoints()
        if subset is not None and self.honor_subset_hint:
            endpoints = subset_candidates(endpoints, subset)
        # Readiness comes from scrapes; if every allowed endpoint looks down, route anyway
        # rather than refuse everything on a scrape misconfiguration.
        ready = [ep for ep in endpoints if ep.ready]
        if not ready and not endpoints:
            raise ServiceUnavailable("failed to find endpoint candidates for serving the request")
        return ready or list(endpoints)

    def random_endpoint(self, subset: Sequence[str] | None) -> Endpoint:
        """For headers-only requests (no body to parse): a uniformly random candidate."""
        if not self.pool.endpoints():
            raise InternalError("no endpoints available in the pool")
        return self.rng.choice(self.candidates(subset))

    async def handle_request(
        self, ctx: RequestContext, headers: Mapping[str, str], body: bytes, subset: Sequence[str] | None
    ) -> Decision:
        parsed = self.config.parser.parse_request(headers, body)
        target = headers.get(MODEL_REWRITE_HEADER) or parsed.model
        request = InferenceRequest(
            request_id=ctx.request_id, api=parsed.api, path=parsed.path, model=parsed.model, target_model=target,
            body=parsed.body, raw_body=body, stream=parsed.stream, headers=headers,
            fairness_id=headers.get(FAIRNESS_ID_HEADER) or DEFAULT_FAIRNESS_ID,
            objective=headers.get(OBJECTIVE_HEADER) or None, cache_salt=parsed.cache_salt,
            prompt=parsed.prompt, received_at=ctx.received_at,
        )
        ctx.request = request
        candidates = self.candidates(subset)
        cycle = CycleState()
        for producer in self.config.producers:
            try:
                await producer.prepare_data(cycle, request, candidates)
            except Exception:  # noqa: BLE001 - missing data degrades scoring, never fails the request
                self._errors.report("data producer", producer)
        for admitter in self.config.admitters:
            await admitter.admit(request, candidates)
        result = self._schedule(cycle, request, candidates)
        endpoints = result.primary.endpoints
        ctx.scheduled(endpoints[0])
        for plugin in self.config.pre_request:
            try:
                plugin.pre_request(cycle, request, result)
            except Exception:  # noqa: BLE001 - bookkeeping must not fail a routed request
                self._errors.report("pre-request", plugin)
        if self.account_dispatches:
            cached = prefix_match(cycle).cached_tokens(endpoints[0].name)
            account_dispatch(endpoints[0], len(request.prompt) or len(body), cached)
        new_body = None
        if target != parsed.model:
            new_body = orjson.dumps({**parsed.body, "model": target})
        if self.metrics is not None:
            self.metrics.request_total.labels(request.model, request.target_model, str(request.priority)).inc()
            per_model = self.metrics.for_model(request.model, request.target_model)
            per_model.request_sizes.observe(len(new_body if new_body is not None else body))
            per_model.running.inc()
        return Decision([ep.hostport for ep in endpoints], new_body)

    def _schedule(self, cycle: CycleState, request: InferenceRequest, candidates: list[Endpoint]) -> SchedulingResult:
        trace = None
        if self.decisions.enabled:
            trace = DecisionTrace(request.request_id, request.target_model, [ep.name for ep in candidates])
        start = perf_counter()
        try:
            result = self.config.scheduler.schedule(cycle, request, candidates, trace)
        except PickerError:
            self._record_attempt(start, None)
            raise
        except Exception as exc:
            self._record_attempt(start, None)
            log.exception("scheduling failed for request %s", request.request_id)
            raise InternalError("scheduling failed (see the picker's log)") from exc
        primary = result.primary.endpoints[0]
        self._record_attempt(start, primary)
        if trace is not None:
            trace.destination = [ep.name for ep in result.primary.endpoints]
            self.decisions.record(trace)
        return result

    def _record_attempt(self, start: float, endpoint: Endpoint | None) -> None:
        if self.metrics is None:
            return
        self.metrics.scheduler_duration.observe(perf_counter() - start)
        if endpoint is None:
            self.metrics.scheduler_attempts.labels("failure", "", "", "", "").inc()
        else:
            self.metrics.scheduler_attempts.labels("success", "", endpoint.name, "", str(endpoint.metadata.port)).inc()

    # --- response path ------------------------------------------------------------

    def response_headers(self, ctx: RequestContext, headers: dict[str, str]) -> None:
        ctx.response_started(headers)
        if ctx.request is None:
            return
        for plugin in self.config.response_received:
            try:
                plugin.response_received(ctx.request, ctx.response)
            except Exception:  # noqa: BLE001 - bookkeeping must not fail a routed request
                self._errors.report("response-received", plugin)

    def response_chunk(self, ctx: RequestContext, chunk: bytes, end_of_stream: bool, rewrite: bool = True) -> bytes:
        """Account for one response body chunk; returns the bytes to forward.

        ``rewrite``: whether the chunk may be changed (the model name given back); the
        transport says no when Envoy's response mode cannot take a body of another length.
        """
        ctx.chunk_seen(chunk)
        request = ctx.request
        if request is not None:
            for plugin in self.config.response_streaming:
                try:
                    plugin.response_streaming(request, ctx.response, chunk)
                except Exception:  # noqa: BLE001 - bookkeeping must not fail a routed request
                    self._errors.report("response-streaming", plugin)
            if rewrite and request.target_model != request.model:
                chunk = rewrite_model_name(chunk, request.target_model, request.model)
        if end_of_stream:
            self.finish(ctx, completed=True)
        return chunk

    def finish(self, ctx: RequestContext, completed: bool = False, error: PickerError | None = None) -> None:
        """End of the request, however it ended. Idempotent."""
        if ctx.finished:
            return
        ctx.finished = True
        request = ctx.request
        if completed:
            ctx.response.completed = True
            ctx.response.usage = ctx.usage.finish() if ctx.usage is not None else None
        if request is not None and ctx.endpoint is not None:
            for plugin in self.config.response_complete:
                try:
                    plugin.response_complete(request, ctx.response)
                except Exception:  # noqa: BLE001 - bookkeeping must not fail a routed request
                    self._errors.report("response-complete", plugin)
        if self.metrics is not None:
            self._record_end(ctx, error)

    def _record_end(self, ctx: RequestContext, error: PickerError | None) -> None:
        metrics = self.metrics
        assert metrics is not None
        request = ctx.request
        model, target = (request.model, request.target_model) if request is not None else ("", "")
        code = error.code if error is not None else ("ModelServerError" if ctx.response.status >= 400 else "")
        if code:
            metrics.request_error_total.labels(model, target, code).inc()
        if request is None or ctx.endpoint is None:
            return
        per_model = metrics.for_model(model, target)
        per_model.running.dec()
        if not ctx.response.completed:
            return
        elapsed = time.monotonic() - ctx.received_at
        per_model.duration.observe(elapsed)
        per_model.response_sizes.observe(ctx.response.body_bytes)
        usage = ctx.response.usage
        if usage is not None:
            if usage.prompt_tokens > 0:
                per_model.input_tokens.observe(usage.prompt_tokens)
                per_model.cached_tokens.observe(usage.cached_tokens)
            if usage.completion_tokens > 0:
                per_model.output_tokens.observe(usage.completion_tokens)
                per_model.normalized_tpot.observe(elapsed / usage.completion_tokens)


def rewrite_model_name(chunk: bytes, target: str, incoming: str) -> bytes:
    """Give the client back the model name it asked for (the Go EPP's byte replacement)."""
    for separator in (b'"model":"', b'"model": "'):
        needle = separator + target.encode() + b'"'
        if needle in chunk:
            return chunk.replace(needle, separator + incoming.encode() + b'"')
    return chunk
