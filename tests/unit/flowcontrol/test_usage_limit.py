"""priority-holdback-policy: lower bands stop at lower saturation (llm-d's strategies)."""

from __future__ import annotations

from typing import Any

import pytest

from epp.datalayer.pool import EndpointPool
from epp.errors import ConfigError
from epp.flowcontrol.usage_limit import PriorityHoldbackParams, PriorityHoldbackPolicy
from epp.framework.params import decode_params
from epp.framework.plugin import Handle


def holdback(**raw: Any) -> PriorityHoldbackPolicy:
    params = decode_params(PriorityHoldbackParams, raw, "plugins[0].parameters")
    return PriorityHoldbackPolicy("holdback", params, Handle(pool=EndpointPool()))


def test_stepwise_spread_spaces_ceilings_evenly_by_rank() -> None:
    policy = holdback(strategy="stepwise-spread", minCeiling=0.4, maxCeiling=1.0)
    bands = (100, 10, 0, -1)
    assert [round(policy.ceiling(p, 0.5, bands), 6) for p in bands] == [1.0, 0.8, 0.6, 0.4]


def test_linear_proportional_follows_the_numeric_priorities() -> None:
    policy = holdback(strategy="linear-proportional", minCeiling=0.5)
    bands = (100, 0, -100)
    assert [policy.ceiling(p, 0.0, bands) for p in bands] == [1.0, 0.75, 0.5]
    assert policy.ceiling(90, 0.0, bands) == pytest.approx(0.975)  # a band not yet listed is placed too


def test_a_single_band_gets_the_highest_ceiling() -> None:
    assert holdback(strategy="stepwise-spread", minCeiling=0.2, maxCeiling=0.9).ceiling(5, 0.3, (5,)) == 0.9


@pytest.mark.parametrize(("raw", "field"), [
    ({"minCeiling": 0.5}, "strategy"),
    ({"strategy": "stepwise-spread"}, "minCeiling"),
    ({"strategy": "random", "minCeiling": 0.5}, "strategy"),
    ({"strategy": "stepwise-spread", "minCeiling": 1.0}, "minCeiling"),
    ({"strategy": "stepwise-spread", "minCeiling": 0.5, "maxCeiling": 0}, "maxCeiling"),
    ({"strategy": "stepwise-spread", "minCeiling": 0.8, "maxCeiling": 0.6}, "minCeiling"),
])
def test_bad_parameters_name_their_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        holdback(**raw)
    assert f"plugins[0].parameters.{field}" in str(err.value)
