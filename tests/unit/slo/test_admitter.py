"""``latency-slo-admitter``: sheddable requests with objectives need an endpoint that can take them."""

from __future__ import annotations

import random
from collections.abc import Mapping
from types import MappingProxyType

import pytest

from epp.datalayer.endpoint import Endpoint, EndpointMetadata, Metrics
from epp.datalayer.pool import EndpointPool
from epp.errors import ConfigError, InternalError
from epp.framework.attributes import LATENCY_PREDICTIONS_KEY, LatencyPrediction, LatencyPredictions
from epp.framework.plugin import Handle
from epp.framework.registry import Registry
from epp.framework.requestcontrol import Admitter
from epp.framework.scheduling import CycleState
from epp.plugins.slo.admitter import LatencySloAdmitter
from epp.requests.types import ApiKind, InferenceRequest


def admitter() -> LatencySloAdmitter:
    registry = Registry()
    registry.register(LatencySloAdmitter)
    built = registry.create("latency-slo-admitter", "admit", None, Handle(pool=EndpointPool(),
                                                                          rng=random.Random(1)), "plugins[0]")
    assert isinstance(built, LatencySloAdmitter)
    return built


def request(priority: int = -1, ttft: float | None = 200.0, tpot: float | None = None) -> InferenceRequest:
    return InferenceRequest(request_id="r", api=ApiKind.COMPLETIONS, path="/v1/completions", model="m",
                            target_model="m", body={}, raw_body=b"{}", stream=False, headers={},
                            priority=priority, slo_ttft_ms=ttft, slo_tpot_ms=tpot)


def endpoint(name: str, kv: float = 0.5) -> Endpoint:
    ep = Endpoint(EndpointMetadata(name, "10.0.0.1", 8000, 8000, MappingProxyType({})))
    ep.metrics = Metrics(kv_cache_usage_percent=kv)
    return ep


def violating(dispatched: int = 2) -> LatencyPrediction:
    return LatencyPrediction(300.0, 10.0, -100.0, -10.0, has_ttft_slo=True, dispatched=dispatched)


def meeting() -> LatencyPrediction:
    return LatencyPrediction(100.0, 10.0, 100.0, -10.0, has_ttft_slo=True, dispatched=2)


def cycle_with(predictions: Mapping[str, LatencyPrediction]) -> CycleState:
    cycle = CycleState()
    cycle[LATENCY_PREDICTIONS_KEY] = LatencyPredictions(dict(predictions), 200.0, None)
    return cycle


async def test_rejects_a_sheddable_request_no_endpoint_can_serve_in_time() -> None:
    with pytest.raises(InternalError) as err:
        await admitter().admit(request(), [endpoint("a"), endpoint("b")],
                               cycle_with({"a": violating(), "b": violating()}))
    assert err.value.status_code == 500
    assert err.value.body.startswith("inference error: Internal - request cannot be admitted")


@pytest.mark.parametrize(("predictions", "kv_b", "why"), [
    ({"a": violating(), "b": meeting()}, 0.5, "b meets the objective (an unstated TPOT does not count)"),
    ({"a": violating(), "b": violating(dispatched=0)}, 0.5, "b is idle"),
    ({"a": violating(), "b": violating()}, 0.01, "b is cold: KV under 2%"),
    ({}, 0.5, "no predictions: fail open"),
])
async def test_admits_when_some_endpoint_can_take_the_request(
        predictions: dict[str, LatencyPrediction], kv_b: float, why: str) -> None:
    await admitter().admit(request(), [endpoint("a"), endpoint("b", kv=kv_b)], cycle_with(predictions))


@pytest.mark.parametrize("req", [
    pytest.param(request(priority=0), id="priority 0 is not sheddable"),
    pytest.param(request(priority=5), id="positive priority"),
    pytest.param(request(ttft=None, tpot=None), id="no objectives"),
])
async def test_only_sheddable_requests_with_objectives_are_judged(req: InferenceRequest) -> None:
    await admitter().admit(req, [endpoint("a")], cycle_with({"a": violating()}))


async def test_a_tpot_objective_alone_is_judged() -> None:
    tpot_violated = LatencyPrediction(100.0, 40.0, -100.0, -10.0, has_tpot_slo=True, dispatched=1)
    with pytest.raises(InternalError):
        await admitter().admit(request(ttft=None, tpot=30.0), [endpoint("a")], cycle_with({"a": tpot_violated}))


async def test_without_the_cycle_state_it_admits() -> None:
    await admitter().admit(request(), [endpoint("a")])


def test_is_an_admitter_and_takes_no_parameters() -> None:
    assert isinstance(admitter(), Admitter)
    registry = Registry()
    registry.register(LatencySloAdmitter)
    with pytest.raises(ConfigError):
        registry.create("latency-slo-admitter", "x", {"strict": True}, Handle(pool=EndpointPool()), "plugins[0]")
