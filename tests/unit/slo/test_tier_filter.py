"""``slo-headroom-tier-filter``: keep the endpoints predicted to meet the SLO, explore the rest rarely."""

from __future__ import annotations

import random
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest

from epp.datalayer.endpoint import Endpoint, EndpointMetadata
from epp.datalayer.pool import EndpointPool
from epp.errors import ConfigError
from epp.framework.attributes import LATENCY_PREDICTIONS_KEY, LatencyPrediction, LatencyPredictions
from epp.framework.plugin import Handle
from epp.framework.registry import Registry
from epp.framework.scheduling import CycleState
from epp.plugins.slo.tier_filter import SloHeadroomTierFilter
from epp.requests.types import ApiKind, InferenceRequest

REQUEST = InferenceRequest(request_id="r", api=ApiKind.COMPLETIONS, path="/v1/completions", model="m",
                           target_model="m", body={}, raw_body=b"{}", stream=False, headers={})


def endpoint(name: str) -> Endpoint:
    return Endpoint(EndpointMetadata(name, "10.0.0.1", 8000, 8000, MappingProxyType({})))


def tier_filter(params: Mapping[str, Any] | None = None, seed: int = 1) -> SloHeadroomTierFilter:
    registry = Registry()
    registry.register(SloHeadroomTierFilter)
    handle = Handle(pool=EndpointPool(), rng=random.Random(seed))
    built = registry.create("slo-headroom-tier-filter", "tier", params, handle, "plugins[0]")
    assert isinstance(built, SloHeadroomTierFilter)
    return built


def pred(ttft_headroom: float, tpot_headroom: float) -> LatencyPrediction:
    return LatencyPrediction(100.0, 10.0, ttft_headroom, tpot_headroom, has_ttft_slo=True, has_tpot_slo=True)


def kept(filter_: SloHeadroomTierFilter, predictions: Mapping[str, LatencyPrediction] | None,
         names: list[str]) -> list[str]:
    cycle = CycleState()
    if predictions is not None:
        cycle[LATENCY_PREDICTIONS_KEY] = LatencyPredictions(dict(predictions), 500.0, 50.0)
    return [ep.name for ep in filter_.filter(cycle, REQUEST, [endpoint(n) for n in names])]


MIXED = {"ok": pred(10, 1), "zero": pred(0, 0), "slow": pred(-1, 1), "jerky": pred(1, -1)}


def test_mixed_tiers_keep_the_positive_tier() -> None:
    # Headroom exactly 0 meets the objective; an endpoint without a prediction cannot be shown to.
    assert kept(tier_filter(), MIXED, ["ok", "zero", "slow", "jerky", "unknown"]) == ["ok", "zero"]


def test_only_negative_endpoints_are_all_kept() -> None:
    assert kept(tier_filter(), MIXED, ["slow", "jerky"]) == ["slow", "jerky"]


def test_only_positive_endpoints_are_all_kept() -> None:
    assert kept(tier_filter(), MIXED, ["ok", "zero"]) == ["ok", "zero"]


def test_no_predictions_keeps_every_endpoint() -> None:
    assert kept(tier_filter(), None, ["a", "b"]) == ["a", "b"]
    assert kept(tier_filter(), {}, ["a", "b"]) == ["a", "b"]


def test_requests_without_objectives_keep_every_endpoint() -> None:
    no_slo = {n: LatencyPrediction(t, 5.0, -t, -5.0) for n, t in (("a", 50.0), ("b", 90.0))}
    assert kept(tier_filter(), no_slo, ["a", "b"]) == ["a", "b"]


def test_epsilon_one_always_explores_the_negative_tier() -> None:
    assert kept(tier_filter({"epsilonExploreNeg": 1}), MIXED, ["ok", "slow", "unknown"]) == ["slow", "unknown"]


def test_epsilon_zero_never_explores() -> None:
    filter_ = tier_filter({"epsilonExploreNeg": 0})
    assert all(kept(filter_, MIXED, ["ok", "slow"]) == ["ok"] for _ in range(200))


def test_default_epsilon_explores_about_one_percent_of_the_time_reproducibly() -> None:
    def explorations(seed: int) -> int:
        filter_ = tier_filter(seed=seed)
        return sum(kept(filter_, MIXED, ["ok", "slow"]) == ["slow"] for _ in range(5000))

    first = explorations(7)
    assert first == explorations(7)  # the handle's seeded rng decides
    assert 20 <= first <= 90  # 50 expected; binomial sd is 7


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_epsilon_outside_0_1_is_a_config_error(value: float) -> None:
    with pytest.raises(ConfigError) as err:
        tier_filter({"epsilonExploreNeg": value})
    assert err.value.field == "plugins[0].parameters.epsilonExploreNeg"
