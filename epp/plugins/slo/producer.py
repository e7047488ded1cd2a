"""``predicted-latency-producer``: predicted TTFT/TPOT and SLO headroom per candidate, learned in-process.

PrepareData captures each candidate's features (``features.features_for``) and, unless
``predictInPrepareData`` is false, predicts with the in-process ``LatencyPredictor`` and
writes ``LatencyPredictions`` under ``LATENCY_PREDICTIONS_KEY``: headroom is
``objective × sloBufferFactor − predicted``; an objective the request does not state
counts as met (headroom 0) when it states the other one, and a request stating none gets
``0 − predicted`` on both, as in the Go EPP. ``dispatched`` is this picker's in-flight
requests on the endpoint. Time the request already spent before routing (body upload,
the flow-control queue) is taken off the TTFT objective first, since the model predicts
only what happens from routing on.
PreRequest keeps the chosen endpoint's feature row and prediction in
``request.plugin_state`` (the body is released after routing). ResponseComplete measures
and trains:

- Only completed 2xx responses train. Errors, disconnects and resets train nothing.
- Streaming (SSE) responses: TTFT = first body chunk − routed; TPOT = (completion
  − first chunk) / (completion_tokens − 1), from the usage counts, when at least 2 tokens
  were generated and usage was reported.
- Non-streaming responses: only end-to-end latency is known, and it mixes TTFT with the
  whole decode. Training TTFT on it would teach the model that long answers mean slow
  first tokens, so such a response trains TTFT only when it generated at most one token
  (then end-to-end latency *is* TTFT) and never TPOT. The Go EPP's ``streamingMode: false``
  (train "TTFT" on end-to-end latency) is deliberately not reproduced.

Parameters (Go names and defaults, where they mean something here):

- ``sloBufferFactor`` (1.0, > 0): multiplies the objective before headroom is computed.
- ``latencyQuantile`` (0, in [0, 1); 0 = no margin: the typical latency, like the Go
  predictor's ``mean`` objective that its Helm chart sets): the share of requests the
  predicted latency should cover (the Go predictor's ``quantile`` objective,
  ``LATENCY_QUANTILE_ALPHA`` 0.9). Predictions and headroom use
  ``LatencyPredictor.predict_bound``: the typical prediction times the endpoint's learnt
  margin, the quantile of actual / predicted on its recent held-out requests. It trades
  objectives against each other: with 0.9, loose objectives stop going to replicas that
  meet them only typically, and crowd the fast replicas the tight ones need (issue 9
  benchmark: loose 84 → 100 %, tight 79 → 54-60 %).
- ``endpointRoleLabel`` (""): label key for disaggregated serving; on endpoints whose label
  value is ``prefill`` TPOT is neutralised (predicted 0, headroom 0), as in Go.
- ``predictInPrepareData`` (true; Go's newer spelling ``predictInProduce`` is accepted
  too): false = training-only mode, no predictions are written.
- ``samplingMean`` (1000, > 0), ``maxDecodeTokenSamplesForPrediction`` (0, ≥ 0),
  ``contextTTL`` ("5m"), ``streamingMode`` (false), ``prefixMatchInfoProducerName``,
  ``latencyWindowPluginRef``, ``useEncoderCacheFeatures``,
  ``encoderCacheMatchInfoProducerName``: accepted so Go configs load unchanged; they
  concern the Go sidecar's token sampling, request-context cache, labelling or producers
  that do not exist here. Setting one to a non-default value logs a note at start-up.
- Ours: ``statePath`` ("": no persistence), ``refitInterval`` ("5s"), ``refitSamples``
  (500: refit early once that many samples wait), ``maxSamples`` (10000: ring buffer).

For metrics, the server sets ``on_observed(request, actual_ttft_ms, actual_tpot_ms,
predicted)`` (called at every response complete of a routed request; actuals ``None`` when
not measured), and ``on_predicted(request, chosen endpoint's prediction, seconds spent
predicting)`` at PreRequest of every request that got predictions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from epp.datalayer.endpoint import Endpoint
from epp.framework.attributes import (
    INFLIGHT_LOAD_KEY,
    LATENCY_PREDICTIONS_KEY,
    PREFIX_MATCH_KEY,
    LatencyPrediction,
    LatencyPredictions,
    inflight_load,
    prefix_match,
    request_prompt_tokens,
)
from epp.framework.params import Duration, require
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.requestcontrol import ResponseInfo
from epp.framework.scheduling import CycleState, SchedulingResult
from epp.plugins.slo.features import Features, features_for
from epp.plugins.slo.predictor import LatencyPredictor
from epp.plugins.slo.routed_rate import RoutedRate
from epp.requests.types import InferenceRequest

__all__ = ["ObservedCallback", "PredictedCallback", "PredictedLatencyParams", "PredictedLatencyProducer"]

log = logging.getLogger(__name__)

ObservedCallback = Callable[[InferenceRequest, float | None, float | None, LatencyPrediction | None], None]
PredictedCallback = Callable[[InferenceRequest, LatencyPrediction | None, float], None]

_PREFILL_ROLE = "prefill"


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictedLatencyParams:
    sampling_mean: float = 1000.0
    max_decode_token_samples_for_prediction: int = 0
    slo_buffer_factor: float = 1.0
    latency_quantile: float = 0.0
    context_ttl: Duration = field(default=Duration(300.0), metadata={"key": "contextTTL"})
    streaming_mode: bool = False
    endpoint_role_label: str = ""
    predict_in_prepare_data: bool = True
    predict_in_produce: bool | None = None
    prefix_match_info_producer_name: str = ""
    latency_window_plugin_ref: str = ""
    use_encoder_cache_features: bool = False
    encoder_cache_match_info_producer_name: str = ""
    state_path: str = ""
    refit_interval: Duration = Duration(5.0)
    refit_samples: int = 500
    max_samples: int = 10_000

    def __post_init__(self) -> None:
        require(self.sampling_mean > 0, "sampling_mean", "must be > 0", self.sampling_mean)
        require(self.max_decode_token_samples_for_prediction >= 0, "max_decode_token_samples_for_prediction",
                "must be >= 0", self.max_decode_token_samples_for_prediction)
        require(self.slo_buffer_factor > 0, "slo_buffer_factor", "must be > 0", self.slo_buffer_factor)
        require(0 <= self.latency_quantile < 1, "latency_quantile", "must be >= 0 and < 1 (0: no margin)",
                self.latency_quantile)
        require(self.refit_interval > 0, "refit_interval", "must be > 0", self.refit_interval)
        require(self.refit_samples >= 1, "refit_samples", "must be >= 1", self.refit_samples)
        require(1 <= self.max_samples <= 1_000_000, "max_samples", "must be between 1 and 1000000",
                self.max_samples)

    @property
    def predicts(self) -> bool:
        return self.predict_in_prepare_data and self.predict_in_produce is not False


# Go parameters that only concern the sidecars or Go-only producers: (field, YAML key, default).
_IGNORED = (
    ("sampling_mean", "samplingMean", 1000.0),
    ("max_decode_token_samples_for_prediction", "maxDecodeTokenSamplesForPrediction", 0),
    ("context_ttl", "contextTTL", 300.0),
    ("streaming_mode", "streamingMode", False),
    ("prefix_match_info_producer_name", "prefixMatchInfoProducerName", ""),
    ("latency_window_plugin_ref", "latencyWindowPluginRef", ""),
    ("use_encoder_cache_features", "useEncoderCacheFeatures", False),
    ("encoder_cache_match_info_producer_name", "encoderCacheMatchInfoProducerName", ""),
)


@dataclass(slots=True)
class _Candidates:
    """PrepareData's rows and predictions, until PreRequest picks the chosen endpoint's."""

    rows: dict[str, Features]
    predictions: dict[str, LatencyPrediction]
    seconds: float = 0.0  # time spent predicting for this request


@dataclass(frozen=True, slots=True)
class _Routed:
    """What the chosen endpoint looked like when the request was routed there."""

    endpoint: str
    features: Features
    prediction: LatencyPrediction | None
    routed_at: float  # clock() when routed: TTFT is learnt from here, not from arrival


class PredictedLatencyProducer(BasePlugin):
    """Predicts TTFT/TPOT per candidate with an in-process model and learns from completed responses."""

    TYPE = "predicted-latency-producer"
    PARAMS = PredictedLatencyParams
    PRODUCES = frozenset({LATENCY_PREDICTIONS_KEY})
    # Features: the prefix match and the in-flight load (prefill backlog, requests sent here).
    # Declared so the loader creates their producers when missing and runs them first.
    CONSUMES = frozenset({PREFIX_MATCH_KEY, INFLIGHT_LOAD_KEY})
    params: PredictedLatencyParams

    def __init__(self, name: str, params: PredictedLatencyParams | None, handle: Handle) -> None:
        super().__init__(name, params or PredictedLatencyParams(), handle)
        p = self.params
        for attr, key, default in _IGNORED:
            if getattr(p, attr) != default:
                log.info("%s: %s is accepted for Go configs and ignored (it concerns the Go sidecars)",
                         self.typed_name, key)
        self.predictor = LatencyPredictor(max_samples=p.max_samples, refit_interval=float(p.refit_interval),
                                          refit_samples=p.refit_samples, state_path=p.state_path or None,
                                          quantile=p.latency_quantile or None)
        self._state_key = f"{self.TYPE}/{name}"
        # Uncached prompt tokens this picker routed to each endpoint lately: the TPOT model's view
        # of the prompts that will arrive during a request's decode.
        self.routed = RoutedRate()
        self._buffer = p.slo_buffer_factor
        self._role_label = p.endpoint_role_label
        self._predicts = p.predicts
        self.clock: Callable[[], float] = time.monotonic
        self.timer: Callable[[], float] = time.perf_counter
        self.on_observed: ObservedCallback | None = None
        self.on_predicted: PredictedCallback | None = None
        self.last_prediction_seconds = 0.0

    # --- DataProducer ----------------------------------------------------------------------

    async def prepare_data(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> None:
        started = self.timer()
        tokens = request_prompt_tokens(request)
        prefix = prefix_match(cycle)
        load = inflight_load(cycle)
        now = self.clock()
        rate = self.routed.rate
        rows = {ep.name: features_for(ep, tokens, prefix, load, rate(ep.name, now)) for ep in endpoints}
        predictions: dict[str, LatencyPrediction] = {}
        if self._predicts:
            ttft_slo, tpot_slo = request.slo_ttft_ms, request.slo_tpot_ms
            # Time already spent (body upload, the flow-control queue) counts against the TTFT objective;
            # the model predicts only what happens from routing on.
            spent_ms = max(0.0, (now - request.received_at) * 1000.0)
            ttft_goal = ttft_slo * self._buffer - spent_ms if ttft_slo is not None else 0.0
            tpot_goal = tpot_slo * self._buffer if tpot_slo is not None else 0.0
            # An objective the request does not state cannot be missed (headroom 0); a request
            # that states none keeps the Go EPP's 0 - predicted, so it prefers the fastest endpoint.
            stated = ttft_slo is not None or tpot_slo is not None
            judge_ttft = ttft_slo is not None or not stated
            judge_tpot = tpot_slo is not None or not stated
            predict = self.predictor.predict_bound
            for ep in endpoints:
                f = rows[ep.name]
                ttft, tpot = predict(f, ep.name)
                ttft_room = ttft_goal - ttft if judge_ttft else 0.0
                if self._role_label and ep.metadata.labels.get(self._role_label) == _PREFILL_ROLE:
                    tpot, tpot_room = 0.0, 0.0  # a prefill endpoint decodes nothing
                else:
                    tpot_room = tpot_goal - tpot if judge_tpot else 0.0
                predictions[ep.name] = LatencyPrediction(
                    ttft, tpot, ttft_room, tpot_room, ttft_slo is not None, tpot_slo is not None,
                    int(f.inflight_requests), f.kv_usage)
            cycle[LATENCY_PREDICTIONS_KEY] = LatencyPredictions(predictions, ttft_slo, tpot_slo)
        self.last_prediction_seconds = seconds = self.timer() - started
        request.plugin_state[self._state_key] = _Candidates(rows, predictions, seconds)

    # --- PreRequest ------------------------------------------------------------------------

    def pre_request(self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult) -> None:
        chosen = result.primary.endpoints[0]
        candidates = request.plugin_state.get(self._state_key)
        if isinstance(candidates, _Candidates) and chosen.name in candidates.rows:
            routed = _Routed(chosen.name, candidates.rows[chosen.name], candidates.predictions.get(chosen.name),
                             self.clock())
            if self.on_predicted is not None and candidates.predictions:
                self.on_predicted(request, routed.prediction, candidates.seconds)
        else:  # PrepareData did not run for this endpoint: its state now is the best we have
            now = self.clock()
            features = features_for(chosen, request_prompt_tokens(request), prefix_match(cycle), inflight_load(cycle),
                                    self.routed.rate(chosen.name, now))
            routed = _Routed(chosen.name, features, None, now)
        self.routed.add(chosen.name, routed.features.uncached_tokens, routed.routed_at)
        request.plugin_state[self._state_key] = routed

    # --- ResponseComplete ------------------------------------------------------------------

    def response_complete(self, request: InferenceRequest, response: ResponseInfo) -> None:
        routed = request.plugin_state.pop(self._state_key, None)
        if not isinstance(routed, _Routed):
            return
        ttft, tpot = self._measure(routed.routed_at, response)
        if ttft is not None or tpot is not None:
            self.predictor.observe(routed.features, ttft, tpot, routed.endpoint)
        if self.on_observed is not None:
            self.on_observed(request, ttft, tpot, routed.prediction)

    def _measure(self, routed_at: float, response: ResponseInfo) -> tuple[float | None, float | None]:
        """(TTFT ms from routing, TPOT ms) this response lets us measure; ``None`` for what it does not."""
        first = response.first_chunk_at
        if not response.completed or not 200 <= response.status < 300 or first is None:
            return None, None
        ttft = (first - routed_at) * 1000.0
        generated = response.usage.completion_tokens if response.usage is not None else None
        if not response.streaming:
            return (ttft if generated is not None and generated <= 1 else None), None
        tpot = None
        if generated is not None and generated >= 2:
            tpot = (self.clock() - first) * 1000.0 / (generated - 1)
        return ttft, tpot

    # --- background work -------------------------------------------------------------------

    async def run(self) -> None:
        """The predictor's refit loop; the lead starts it as a background task."""
        await self.predictor.run()

    def close(self) -> None:
        """Fold in the last samples and save the state (if ``statePath``); call at shutdown."""
        self.predictor.close()

    def debug_snapshot(self) -> dict[str, object]:
        snapshot: dict[str, object] = dict(self.predictor.debug_snapshot())
        snapshot["lastPredictionMicroseconds"] = round(self.last_prediction_seconds * 1e6, 1)
        return snapshot
