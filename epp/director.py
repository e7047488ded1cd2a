"""The director: the request lifecycle, in one place and in this order.

1. parse (parser plugin; 400 on bad input)  2. model-name rewrite (the new body is the
original bytes with only the model value changed)  3. admission (with the flowControl gate:
wait in the flow controller's queue, 429 over capacity, 503 when the wait outlives the TTL;
without it, Go's legacy rule: a sheddable request (priority < 0) gets 429 while the pool is
saturated)  4. candidates (pool ∩ subset hint; 503; ready and not ejected first)
5. prepare data (data producers)  6. admitter plugins  7. schedule (profiles; 429 when
all filtered out)  8. pre-request plugins (dispatch accounting last)  9. request metrics,
and the body released

Everything that can fail comes before step 8; from there on nothing raises, and
``finish`` releases exactly what steps 8 and 9 recorded.

Then, per response: response-received → response-streaming (per chunk) →
response-complete (exactly once, also when the stream ends early).

The director knows nothing of gRPC or Envoy: the ext_proc server hands it headers and
bytes and turns its ``Decision`` or ``PickerError`` into protocol messages.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter

from epp.config.loader import PickerConfig
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.passive_health import PassiveHealth, routable
from epp.datalayer.pool import EndpointPool
from epp.datalayer.subset import subset_candidates
from epp.errors import BadRequest, InternalError, PickerError, ResourceExhausted, ServiceUnavailable
from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.objectives import ObjectiveStore
from epp.flowcontrol.types import DEFAULT_CRITICALITY, DEFAULT_WORKLOAD_ID, FlowControlRequest, FlowKey, WorkloadContext
from epp.framework.scheduling import CycleState, SchedulingResult
from epp.hookerrors import HookErrors
from epp.metrics import ModelMetrics, PickerMetrics
from epp.plugins.dispatch.accounting import DispatchAccounting
from epp.request_context import RequestContext
from epp.requests.limits import check_model_name
from epp.requests.model_rewrite import ModelNameRestorer, replace_model
from epp.requests.types import InferenceRequest
from epp.scheduling.trace import DecisionLog, DecisionTrace

__all__ = ["Decision", "Director"]

log = logging.getLogger(__name__)

FAIRNESS_ID_HEADER = "x-gateway-inference-fairness-id"
OBJECTIVE_HEADER = "x-gateway-inference-objective"
MODEL_REWRITE_HEADER = "x-gateway-model-name-rewrite"
WORKLOAD_ID_HEADER = "x-workload-id"
CRITICALITY_HEADER = "x-workload-criticality"
SLO_TTFT_HEADER = "x-slo-ttft-ms"
SLO_TPOT_HEADER = "x-slo-tpot-ms"
DEFAULT_FAIRNESS_ID = "default-flow"
# Fairness ids and objective names are Kubernetes-style names (at most 253 characters);
# they key per-flow state, so a client must not be able to make them arbitrarily large.
MAX_HEADER_NAME_VALUE = 253


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
        honor_rewrite_header: bool = True,
        passive_health: PassiveHealth | None = None,
        flow_controller: FlowController | None = None,
        objectives: ObjectiveStore | None = None,
        honor_criticality_header: bool = True,
    ) -> None:
        self.pool = pool
        self.config = config
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.decisions = decisions if decisions is not None else DecisionLog(0)
        self.honor_subset_hint = honor_subset_hint
        self.honor_rewrite_header = honor_rewrite_header
        self.passive_health = passive_health
        self.flow_controller = flow_controller
        self.objectives = objectives
        self.honor_criticality_header = honor_criticality_header
        self._errors = HookErrors()
        self._pre_request = [*config.pre_request, *([DispatchAccounting()] if account_dispatches else [])]

    # --- request path -------------------------------------------------------------

    def candidates(self, subset: Sequence[str] | None) -> list[Endpoint]:
        endpoints: Sequence[Endpoint] = self.pool.endpoints()
        if subset is not None and self.honor_subset_hint:
            endpoints = subset_candidates(endpoints, subset)
        if not endpoints:
            raise ServiceUnavailable("failed to find endpoint candidates for serving the request")
        # Scrape readiness and passive-health ejection steer traffic away; if every allowed
        # endpoint is out, route anyway rather than refuse everything on a misjudgement.
        return routable(endpoints, time.monotonic())

    def random_endpoint(self, subset: Sequence[str] | None) -> Endpoint:
        """For headers-only requests (no body to parse): a uniformly random candidate."""
        return self.rng.choice(self.candidates(subset))

    async def handle_request(
        self, ctx: RequestContext, headers: Mapping[str, str], body: bytes, subset: Sequence[str] | None
    ) -> Decision:
        if ctx.finished:
            raise InternalError("ext_proc protocol error: the request already ended")
        parsed = self.config.parser.parse_request(headers, body)
        target = parsed.model
        rewrite = headers.get(MODEL_REWRITE_HEADER) if self.honor_rewrite_header else None
        if rewrite:
            target = check_model_name(rewrite, f"header {MODEL_REWRITE_HEADER}")
        objective = _bounded_header(headers, OBJECTIVE_HEADER) or None
        request = InferenceRequest(
            request_id=ctx.request_id, api=parsed.api, path=parsed.path, model=parsed.model, target_model=target,
            body=parsed.body, raw_body=body, stream=parsed.stream, headers=headers,
            fairness_id=_bounded_header(headers, FAIRNESS_ID_HEADER) or DEFAULT_FAIRNESS_ID,
            objective=objective, priority=self.objectives.priority(objective) if self.objectives else 0,
            cache_salt=parsed.cache_salt, prompt=parsed.prompt, received_at=ctx.received_at,
            slo_ttft_ms=_objective_ms(headers, SLO_TTFT_HEADER), slo_tpot_ms=_objective_ms(headers, SLO_TPOT_HEADER),
            workload_id=_bounded_header(headers, WORKLOAD_ID_HEADER) or DEFAULT_WORKLOAD_ID,
            criticality=_criticality(headers) if self.honor_criticality_header else DEFAULT_CRITICALITY,
        )
        ctx.request = request
        # Everything that can fail the request happens before any bookkeeping: once
        # ``ctx.scheduled`` is called, ``finish`` releases what follows, exactly once.
        new_body = replace_model(body, target) if target != parsed.model else None
        controller = self.flow_controller
        if controller is not None:
            # Waits here while the pool is saturated; candidates are chosen after the wait.
            await controller.enqueue_and_wait(_flow_request(request))
        candidates = self.candidates(subset)
        if controller is None and request.priority < 0 and \
                self.config.saturation_detector.saturation(candidates, time.monotonic()) >= 1.0:
            raise ResourceExhausted("system saturated, sheddable request dropped")
        cycle = CycleState()
        for producer in self.config.producers:
            try:
                await producer.prepare_data(cycle, request, candidates)
            except Exception:  # noqa: BLE001 - missing data degrades scoring, never fails the request
                self._errors.report("data producer", producer)
        for admitter in self.config.admitters:
            await admitter.admit(request, candidates, cycle)
        result = self._schedule(cycle, request, candidates)
        endpoints = result.primary.endpoints
        # Bookkeeping from here on; none of it may raise (paired with ``finish``).
        ctx.scheduled(endpoints[0])
        if target != parsed.model:
            ctx.restorer = ModelNameRestorer(target, parsed.model)
        for plugin in self._pre_request:
            try:
                plugin.pre_request(cycle, request, result)
            except Exception:  # noqa: BLE001 - bookkeeping must not fail a routed request
                self._errors.report("pre-request", plugin)
        if self.metrics is not None:
            ctx.labels = labels = self.metrics.models.labels(request.model, request.target_model)
            self.metrics.request_total.labels(*labels, str(request.priority)).inc()
            per_model = self.metrics.for_model(*labels)
            per_model.request_sizes.observe(len(new_body if new_body is not None else body))
            ctx.running = per_model.running
            ctx.running.inc()
        request.release_payload()
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
        # The status is final here: connect failures and timeouts arrive as Envoy's own
        # 503/504 replies, and a long successful stream counts as soon as it starts.
        if self.passive_health is not None and ctx.endpoint is not None:
            self.passive_health.record(ctx.endpoint, ctx.response.status)
        if ctx.request is None:
            return
        for plugin in self.config.response_received:
            try:
                plugin.response_received(ctx.request, ctx.response)
            except Exception:  # noqa: BLE001 - bookkeeping must not fail a routed request
                self._errors.report("response-received", plugin)

    def response_chunk(self, ctx: RequestContext, chunk: bytes, end_of_stream: bool, rewrite: bool = True,
                       last: bool | None = None) -> bytes:
        """Account for one response body chunk; returns the bytes to forward.

        ``rewrite``: whether the chunk may be changed (the model name given back); the
        transport says no when Envoy's response mode cannot take a body of another length.
        ``last``: no more body follows (defaults to ``end_of_stream``; a buffered body that
        trailers follow is the last one without ending the stream).
        """
        ctx.chunk_seen(chunk)
        request = ctx.request
        if request is not None:
            for plugin in self.config.response_streaming:
                try:
                    plugin.response_streaming(request, ctx.response, chunk)
                except Exception:  # noqa: BLE001 - bookkeeping must not fail a routed request
                    self._errors.report("response-streaming", plugin)
        if rewrite and ctx.restorer is not None:
            chunk = ctx.restorer.feed(chunk, end_of_stream if last is None else last)
        if end_of_stream:
            self.finish(ctx, completed=True)
        return chunk

    def response_trailers(self, ctx: RequestContext) -> bytes:
        """The response ends with trailers: finish it; returns body bytes still held back."""
        tail = ctx.restorer.feed(b"", end_of_stream=True) if ctx.restorer is not None else b""
        self.finish(ctx, completed=True)
        return tail

    def finish(self, ctx: RequestContext, completed: bool = False, error: PickerError | None = None) -> None:
        """End of the request, however it ended. Idempotent."""
        if ctx.finished:
            return
        ctx.finished = True
        request = ctx.request
        if self.flow_controller is not None:
            self.flow_controller.notify()  # the pool may have room for a waiting request now
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
        model, target = "", ""
        if request is not None:
            if 200 <= ctx.response.status < 300:
                metrics.models.served(request.model, request.target_model)
            # The routed request keeps the labels it was counted under when it started.
            model, target = ctx.labels or metrics.models.labels(request.model, request.target_model)
        code = error.code if error is not None else ("ModelServerError" if ctx.response.status >= 400 else "")
        if code:
            metrics.request_error_total.labels(model, target, code).inc()
        if request is None or ctx.endpoint is None:
            return
        if ctx.running is not None:
            ctx.running.dec()
            ctx.running = None
        per_model = metrics.for_model(model, target)
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
        if ctx.response.streaming and 200 <= ctx.response.status < 300:
            self._record_stream_latency(ctx, request, per_model, model, target)

    def _record_stream_latency(self, ctx: RequestContext, request: InferenceRequest, per_model: ModelMetrics,
                               model: str, target: str) -> None:
        """TTFT (first chunk, from arrival) and TPOT of a streamed response; objectives missed.

        Only streams have a first token the client sees before the end; a non-streamed
        response's latency is its whole duration (request_duration_seconds)."""
        first = ctx.response.first_chunk_at
        if first is None:
            return
        metrics = self.metrics
        assert metrics is not None
        ttft = first - ctx.received_at
        per_model.ttft.observe(ttft)
        if request.slo_ttft_ms is not None and ttft * 1000.0 > request.slo_ttft_ms:
            metrics.request_slo_violation.labels(model, target, "ttft").inc()
        usage = ctx.response.usage
        if usage is None or usage.completion_tokens < 2:
            return
        tpot = (time.monotonic() - first) / (usage.completion_tokens - 1)
        per_model.tpot.observe(tpot)
        if request.slo_tpot_ms is not None and tpot * 1000.0 > request.slo_tpot_ms:
            metrics.request_slo_violation.labels(model, target, "tpot").inc()


def _flow_request(request: InferenceRequest) -> FlowControlRequest:
    """The request as flow control sees it; its TTL is the configured default (set by the controller)."""
    return FlowControlRequest(
        request_id=request.request_id, flow=FlowKey(request.fairness_id, request.priority),
        size_bytes=request.size_bytes, received_at=request.received_at,
        workload=WorkloadContext(request.workload_id, request.criticality), slo_ttft_ms=request.slo_ttft_ms,
        model=request.model, target_model=request.target_model,
    )


def _objective_ms(headers: Mapping[str, str], name: str) -> float | None:
    """A latency objective header: a positive number of milliseconds, or absent."""
    value = headers.get(name)
    if value is None or value == "":
        return None
    try:
        number = float(value.strip())
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise BadRequest(f"header {name} must be a positive number of milliseconds, got {value[:32]!r}")
    return number


def _criticality(headers: Mapping[str, str]) -> int:
    """``x-workload-criticality``: 1 (least) to 5 (most critical); absent or anything else is 3."""
    value = headers.get(CRITICALITY_HEADER, "").strip()
    if len(value) == 1 and "1" <= value <= "5":
        return int(value)
    return DEFAULT_CRITICALITY


def _bounded_header(headers: Mapping[str, str], name: str) -> str:
    """A control header's value, refused when too long to be a name (it becomes a map key)."""
    value = headers.get(name, "")
    if len(value) > MAX_HEADER_NAME_VALUE:
        raise BadRequest(f"header {name} is longer than {MAX_HEADER_NAME_VALUE} characters")
    return value
