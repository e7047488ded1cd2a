"""``predicted-latency-producer``: predictions and headroom per candidate, training from responses."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.errors import ConfigError
from epp.framework.attributes import (
    INFLIGHT_LOAD_KEY,
    LATENCY_PREDICTIONS_KEY,
    PREFIX_MATCH_KEY,
    InFlightLoad,
    LatencyPrediction,
    PrefixMatch,
    latency_predictions,
)
from epp.framework.params import decode_params
from epp.framework.plugin import Handle
from epp.framework.requestcontrol import ResponseInfo, Usage
from epp.framework.scheduling import CycleState
from epp.plugins.slo.producer import PredictedLatencyParams, PredictedLatencyProducer
from epp.requests.types import InferenceRequest

Observed = tuple[str, float | None, float | None, LatencyPrediction | None]


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def build(handle: Handle, raw: dict[str, Any] | None = None) -> PredictedLatencyProducer:
    params = decode_params(PredictedLatencyParams, raw, "plugins[0].parameters")
    producer = PredictedLatencyProducer("predictor", params, handle)
    producer.clock = FakeClock(100.0)  # requests arrive (received_at) and are routed at 100.0
    return producer


@pytest.fixture
def producer(handle: Handle) -> PredictedLatencyProducer:
    return build(handle)


def slo_request(make_request: Any, ttft: float | None = None, tpot: float | None = None,
                request_id: str = "r1") -> InferenceRequest:
    request: InferenceRequest = make_request(b"x" * 4000, request_id=request_id)
    request.slo_ttft_ms, request.slo_tpot_ms = ttft, tpot
    request.received_at = 100.0
    return request


async def route(producer: PredictedLatencyProducer, request: InferenceRequest, chosen: Endpoint,
                endpoints: list[Endpoint], routed: Any, cycle: CycleState | None = None) -> CycleState:
    cycle = cycle if cycle is not None else CycleState()
    await producer.prepare_data(cycle, request, endpoints)
    producer.pre_request(cycle, request, routed(chosen))
    return cycle


def streamed(endpoint: Endpoint, *, first: float = 100.25, tokens: int | None = 11, status: int = 200,
             completed: bool = True, streaming: bool = True) -> ResponseInfo:
    usage = Usage(prompt_tokens=1000, completion_tokens=tokens) if tokens is not None else None
    return ResponseInfo(endpoint=endpoint, status=status, streaming=streaming, first_chunk_at=first, usage=usage,
                        completed=completed)


def recorder(producer: PredictedLatencyProducer) -> list[Observed]:
    seen: list[Observed] = []
    producer.on_observed = lambda req, ttft, tpot, pred: seen.append((req.request_id, ttft, tpot, pred))
    return seen


# --- parameters ------------------------------------------------------------------------------

def test_go_parameters_load_and_sidecar_ones_are_noted(handle: Handle, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        producer = build(handle, {"samplingMean": 100, "maxDecodeTokenSamplesForPrediction": 30,
                                  "sloBufferFactor": 1.2, "contextTTL": "5m", "streamingMode": True,
                                  "endpointRoleLabel": "llm-d.ai/role", "predictInPrepareData": True,
                                  "predictInProduce": True, "latencyWindowPluginRef": "window"})
    assert producer.params.slo_buffer_factor == 1.2 and producer.params.context_ttl == 300.0
    assert "samplingMean is accepted for Go configs and ignored" in caplog.text
    assert "streamingMode is accepted" in caplog.text and "sloBufferFactor is accepted" not in caplog.text


@pytest.mark.parametrize(("raw", "field"), [
    ({"samplingMean": -1.0}, "samplingMean"),
    ({"maxDecodeTokenSamplesForPrediction": -1}, "maxDecodeTokenSamplesForPrediction"),
    ({"sloBufferFactor": 0}, "sloBufferFactor"),
    ({"latencyQuantile": 1.0}, "latencyQuantile"),
    ({"latencyQuantile": -0.1}, "latencyQuantile"),
    ({"maxSamples": 0}, "maxSamples"),
    ({"refitInterval": "0s"}, "refitInterval"),
    ({"contextTTL": "soon"}, "contextTTL"),
    ({"noSuchThing": 1}, "noSuchThing"),
])
def test_bad_parameters_name_their_field(handle: Handle, raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(handle, raw)
    assert f"plugins[0].parameters.{field}" in str(err.value)


# --- predictions and headroom ----------------------------------------------------------------

async def test_headroom_against_the_objectives_times_the_buffer(handle: Handle, make_endpoint: Any,
                                                                make_request: Any) -> None:
    producer = build(handle, {"sloBufferFactor": 2.0})
    idle, busy = make_endpoint("idle"), make_endpoint("busy", waiting_queue_size=8, running_requests_size=50,
                                                       kv_cache_usage_percent=0.9)
    cycle = CycleState()
    await producer.prepare_data(cycle, slo_request(make_request, ttft=100.0, tpot=10.0), [idle, busy])
    predictions = latency_predictions(cycle)
    assert (predictions.ttft_slo_ms, predictions.tpot_slo_ms) == (100.0, 10.0)
    for name in ("idle", "busy"):
        p = predictions.get(name)
        assert p is not None and p.has_ttft_slo and p.has_tpot_slo
        assert p.ttft_headroom_ms == pytest.approx(200.0 - p.ttft_ms)
        assert p.tpot_headroom_ms == pytest.approx(20.0 - p.tpot_ms)
    fast, slow = predictions.get("idle"), predictions.get("busy")
    assert fast is not None and slow is not None
    assert fast.ttft_ms < slow.ttft_ms and fast.tpot_ms < slow.tpot_ms
    assert fast.meets_slo and not slow.meets_slo
    assert slow.kv_cache_usage == 0.9


async def test_a_latency_quantile_judges_objectives_by_the_learnt_margin(handle: Handle, make_endpoint: Any,
                                                                         make_request: Any) -> None:
    ep = make_endpoint("a")
    producers = {q: build(handle, {"latencyQuantile": q}) for q in (0, 0.9)}
    assert producers[0].predictor.quantile is None and producers[0.9].predictor.quantile == 0.9
    seen: dict[float, LatencyPrediction] = {}
    for q, producer in producers.items():
        cycle = CycleState()
        request = slo_request(make_request, ttft=1000.0, tpot=100.0)
        await producer.prepare_data(cycle, request, [ep])
        f = request.plugin_state[producer._state_key].rows["a"]
        # Requests on this endpoint take 1x to 2x the typical prediction: the 0.9 margin is ~1.9.
        for i in range(100):
            ttft, tpot = producer.predictor.predict(f, "a")
            producer.predictor.observe(f, ttft * (1 + i / 100), tpot * (1 + i / 100), "a")
        producer.predictor.refit()
        cycle = CycleState()
        await producer.prepare_data(cycle, slo_request(make_request, ttft=1000.0, tpot=100.0), [ep])
        p = latency_predictions(cycle).get("a")
        assert p is not None
        seen[q] = p
    assert 1.7 < seen[0.9].ttft_ms / seen[0].ttft_ms < 2.1
    assert 1.7 < seen[0.9].tpot_ms / seen[0].tpot_ms < 2.1
    assert seen[0.9].tpot_headroom_ms == pytest.approx(100.0 - seen[0.9].tpot_ms)


async def test_time_spent_before_routing_counts_against_the_ttft_objective(
        producer: PredictedLatencyProducer, make_endpoint: Any, make_request: Any) -> None:
    producer.clock = FakeClock(100.3)  # 300 ms in the flow-control queue
    cycle = CycleState()
    await producer.prepare_data(cycle, slo_request(make_request, ttft=500.0), [make_endpoint("a")])
    p = latency_predictions(cycle).get("a")
    assert p is not None and p.ttft_headroom_ms == pytest.approx(200.0 - p.ttft_ms)


async def test_ttft_is_learnt_from_routing_not_from_arrival(producer: PredictedLatencyProducer,
                                                            make_endpoint: Any, make_request: Any, routed: Any) -> None:
    seen = recorder(producer)
    a = make_endpoint("a")
    producer.clock = FakeClock(100.5)  # received at 100.0, routed after waiting 500 ms
    request = slo_request(make_request)
    await route(producer, request, a, [a], routed)
    producer.response_complete(request, streamed(a, first=100.6, tokens=None))
    assert seen[0][1] == pytest.approx(100.0)


async def test_without_objectives_headroom_is_minus_the_prediction(producer: PredictedLatencyProducer,
                                                                   make_endpoint: Any, make_request: Any) -> None:
    cycle = CycleState()
    await producer.prepare_data(cycle, slo_request(make_request), [make_endpoint("a")])
    p = latency_predictions(cycle).get("a")
    assert p is not None and not p.has_ttft_slo and not p.has_tpot_slo
    assert (p.ttft_headroom_ms, p.tpot_headroom_ms) == (-p.ttft_ms, -p.tpot_ms)
    assert p.ttft_ms > 0 and p.tpot_ms > 0


async def test_one_objective_only(producer: PredictedLatencyProducer, make_endpoint: Any, make_request: Any) -> None:
    cycle = CycleState()
    await producer.prepare_data(cycle, slo_request(make_request, tpot=50.0), [make_endpoint("a")])
    p = latency_predictions(cycle).get("a")
    assert p is not None and not p.has_ttft_slo and p.has_tpot_slo
    # The objective it does not state cannot be missed: headroom 0, not Go's 0 - predicted.
    assert p.ttft_headroom_ms == 0.0 and p.tpot_headroom_ms == pytest.approx(50.0 - p.tpot_ms)


async def test_prefix_hits_and_inflight_load_shape_the_prediction(producer: PredictedLatencyProducer,
                                                                  make_endpoint: Any, make_request: Any) -> None:
    cycle = CycleState()
    cycle[PREFIX_MATCH_KEY] = PrefixMatch(total_blocks=10, block_size_tokens=100, matches={"cached": 9})
    cycle[INFLIGHT_LOAD_KEY] = InFlightLoad({"loaded": 3}, {"loaded": 9000}, {"loaded": 6000})
    endpoints = [make_endpoint("cold"), make_endpoint("cached"), make_endpoint("loaded")]
    await producer.prepare_data(cycle, slo_request(make_request, ttft=500.0), endpoints)
    predictions = latency_predictions(cycle)
    cold, cached, loaded = (predictions.get(n) for n in ("cold", "cached", "loaded"))
    assert cold is not None and cached is not None and loaded is not None
    assert cached.ttft_ms < cold.ttft_ms < loaded.ttft_ms
    assert (cold.dispatched, loaded.dispatched) == (0, 3)


async def test_prefill_endpoints_have_tpot_neutralised(handle: Handle, make_endpoint: Any,
                                                       make_request: Any) -> None:
    producer = build(handle, {"endpointRoleLabel": "role"})
    prefill = make_endpoint("p", labels={"role": "prefill"})
    decode = make_endpoint("d", labels={"role": "decode"})
    cycle = CycleState()
    await producer.prepare_data(cycle, slo_request(make_request, ttft=100.0, tpot=1.0), [prefill, decode])
    p, d = latency_predictions(cycle).get("p"), latency_predictions(cycle).get("d")
    assert p is not None and d is not None
    assert (p.tpot_ms, p.tpot_headroom_ms) == (0.0, 0.0) and d.tpot_headroom_ms < 0


@pytest.mark.parametrize("key", ["predictInPrepareData", "predictInProduce"])
async def test_training_only_mode_writes_no_predictions_but_still_learns(
        handle: Handle, key: str, make_endpoint: Any, make_request: Any, routed: Any) -> None:
    producer = build(handle, {key: False})
    a = make_endpoint("a")
    request = slo_request(make_request, ttft=100.0)
    cycle = await route(producer, request, a, [a], routed)
    assert LATENCY_PREDICTIONS_KEY not in cycle
    producer.response_complete(request, streamed(a))
    assert producer.predictor.sample_count == 1


async def test_prediction_time_is_exposed(producer: PredictedLatencyProducer, make_endpoint: Any,
                                          make_request: Any) -> None:
    ticks = iter([5.0, 5.000042])
    producer.timer = lambda: next(ticks)
    await producer.prepare_data(CycleState(), slo_request(make_request), [make_endpoint("a"), make_endpoint("b")])
    assert producer.last_prediction_seconds == pytest.approx(42e-6)


# --- measuring and training ------------------------------------------------------------------

async def test_streamed_response_trains_ttft_at_first_chunk_and_tpot_from_usage(
        producer: PredictedLatencyProducer, make_endpoint: Any, make_request: Any, routed: Any) -> None:
    a, b = make_endpoint("a", running_requests_size=7), make_endpoint("b", running_requests_size=30)
    request = slo_request(make_request, ttft=300.0)
    await route(producer, request, a, [a, b], routed)
    b.metrics = make_endpoint("b").metrics  # later metric changes do not alter the recorded row
    seen = recorder(producer)
    producer.clock = FakeClock(100.25 + 0.5)  # completed 500 ms after the first chunk
    producer.response_complete(request, streamed(a, first=100.25, tokens=11))
    assert len(seen) == 1
    request_id, ttft, tpot, predicted = seen[0]
    assert request_id == "r1" and ttft == pytest.approx(250.0) and tpot == pytest.approx(50.0)
    assert predicted is not None and predicted.has_ttft_slo
    assert producer.predictor.sample_count == 1
    producer.predictor.refit()
    assert producer.predictor.debug_snapshot()["heldOutError"]["ttftSamples"] == 1
    features, sample_ttft, sample_tpot, endpoint = producer.predictor.state()["samples"][0]
    assert endpoint == "a" and features[2] == 7.0
    assert (sample_ttft, sample_tpot) == (pytest.approx(250.0), pytest.approx(50.0))


@pytest.mark.parametrize("tokens", [None, 0, 1])
async def test_streamed_response_without_two_tokens_trains_ttft_only(
        producer: PredictedLatencyProducer, tokens: int | None, make_endpoint: Any, make_request: Any,
        routed: Any) -> None:
    a = make_endpoint("a")
    request = slo_request(make_request)
    await route(producer, request, a, [a], routed)
    seen = recorder(producer)
    producer.clock = FakeClock(101.0)
    producer.response_complete(request, streamed(a, tokens=tokens))
    assert seen[0][1] == pytest.approx(250.0) and seen[0][2] is None


@pytest.mark.parametrize(("tokens", "trains_ttft"), [(1, True), (50, False), (None, False)])
async def test_non_streaming_response_trains_ttft_only_when_it_is_one_token(
        producer: PredictedLatencyProducer, tokens: int | None, trains_ttft: bool, make_endpoint: Any,
        make_request: Any, routed: Any) -> None:
    a = make_endpoint("a")
    request = slo_request(make_request)
    await route(producer, request, a, [a], routed)
    seen = recorder(producer)
    producer.clock = FakeClock(101.0)
    producer.response_complete(request, streamed(a, first=100.8, tokens=tokens, streaming=False))
    assert seen[0][2] is None
    assert (seen[0][1] == pytest.approx(800.0)) if trains_ttft else seen[0][1] is None
    assert producer.predictor.sample_count == (1 if trains_ttft else 0)


@pytest.mark.parametrize("response", [
    pytest.param({"status": 500}, id="server error"),
    pytest.param({"status": 429}, id="rejected"),
    pytest.param({"completed": False}, id="client disconnected"),
    pytest.param({"first": None}, id="no body ever arrived"),
])
async def test_errors_and_incomplete_responses_do_not_train(
        producer: PredictedLatencyProducer, response: dict[str, Any], make_endpoint: Any, make_request: Any,
        routed: Any) -> None:
    a = make_endpoint("a")
    request = slo_request(make_request, ttft=100.0)
    await route(producer, request, a, [a], routed)
    seen = recorder(producer)
    producer.clock = FakeClock(101.0)
    producer.response_complete(request, streamed(a, **response))
    assert producer.predictor.sample_count == 0
    assert len(seen) == 1 and seen[0][1:3] == (None, None) and seen[0][3] is not None


async def test_each_request_trains_once_and_unrouted_ones_never(
        producer: PredictedLatencyProducer, make_endpoint: Any, make_request: Any, routed: Any) -> None:
    a = make_endpoint("a")
    seen = recorder(producer)
    producer.clock = FakeClock(101.0)
    producer.response_complete(slo_request(make_request, request_id="never-routed"), streamed(a))
    request = slo_request(make_request)
    await route(producer, request, a, [a], routed)
    producer.response_complete(request, streamed(a))
    producer.response_complete(request, streamed(a))
    assert producer.predictor.sample_count == 1 and [s[0] for s in seen] == ["r1"]


async def test_pre_request_without_prepare_data_still_records_features(
        producer: PredictedLatencyProducer, make_endpoint: Any, make_request: Any, routed: Any) -> None:
    a = make_endpoint("a", waiting_queue_size=4)
    request = slo_request(make_request)
    producer.pre_request(CycleState(), request, routed(a))
    seen = recorder(producer)
    producer.clock = FakeClock(101.0)
    producer.response_complete(request, streamed(a))
    assert seen[0][3] is None  # nothing was predicted for it
    assert producer.predictor.state()["samples"][0][0][1] == 4.0


async def test_the_training_buffer_is_bounded(handle: Handle, make_endpoint: Any, make_request: Any,
                                              routed: Any) -> None:
    producer = build(handle, {"maxSamples": 5})
    a = make_endpoint("a")
    producer.clock = FakeClock(101.0)
    for i in range(20):
        request = slo_request(make_request, request_id=f"r{i}")
        await route(producer, request, a, [a], routed)
        producer.response_complete(request, streamed(a))
    assert producer.predictor.sample_count == 5


async def test_state_path_persists_across_producers(tmp_path: Path, make_endpoint: Any, make_request: Any,
                                                    routed: Any, handle: Handle) -> None:
    path = tmp_path / "predictor.json"
    first = build(handle, {"statePath": str(path), "refitInterval": "1s"})
    a = make_endpoint("a")
    first.clock = FakeClock(101.0)
    for i in range(30):
        request = slo_request(make_request, request_id=f"r{i}")
        await route(first, request, a, [a], routed)
        first.response_complete(request, streamed(a, first=100.0 + 0.1 + i / 100))
    first.close()
    second = build(handle, {"statePath": str(path)})
    assert second.predictor.sample_count == 30
    assert second.predictor.coefficients == first.predictor.coefficients
    assert second.debug_snapshot()["samples"] == 30


async def test_the_chosen_prediction_and_its_cost_are_reported_at_pre_request(
        producer: PredictedLatencyProducer, make_endpoint: Any, make_request: Any, routed: Any) -> None:
    reported: list[tuple[str, float, float]] = []
    producer.on_predicted = lambda req, pred, seconds: reported.append(
        (req.request_id, pred.ttft_ms if pred else -1.0, seconds))
    a, b = make_endpoint("a"), make_endpoint("b", waiting_queue_size=5)
    cycle = await route(producer, slo_request(make_request, ttft=300.0), b, [a, b], routed)
    chosen = latency_predictions(cycle).get("b")
    assert chosen is not None
    assert [(r, t) for r, t, _ in reported] == [("r1", chosen.ttft_ms)] and reported[0][2] >= 0.0


async def test_prompts_routed_to_an_endpoint_raise_its_predicted_tpot(
        producer: PredictedLatencyProducer, make_endpoint: Any, make_request: Any, routed: Any) -> None:
    busy, quiet = make_endpoint("busy"), make_endpoint("quiet")
    for i in range(5):
        await route(producer, slo_request(make_request, tpot=50.0, request_id=f"r{i}"), busy, [busy, quiet], routed)
    assert producer.routed.rate("busy", 100.0) > 0.0 and producer.routed.rate("quiet", 100.0) == 0.0
    cycle = CycleState()
    await producer.prepare_data(cycle, slo_request(make_request, tpot=50.0, request_id="next"), [busy, quiet])
    predictions = latency_predictions(cycle)
    b, q = predictions.get("busy"), predictions.get("quiet")
    assert b is not None and q is not None
    # Same scraped metrics, same prompt: only the prompts this picker sent there differ.
    assert b.tpot_ms > q.tpot_ms and b.ttft_ms == q.ttft_ms
    # The rate fades once the picker stops sending: 20 s later the two look alike again.
    producer.clock = FakeClock(120.0)
    later = slo_request(make_request, tpot=50.0, request_id="later")
    later.received_at = 120.0
    cycle = CycleState()
    await producer.prepare_data(cycle, later, [busy, quiet])
    b, q = latency_predictions(cycle).get("busy"), latency_predictions(cycle).get("quiet")
    assert b is not None and q is not None and b.tpot_ms == pytest.approx(q.tpot_ms, rel=1e-3)
