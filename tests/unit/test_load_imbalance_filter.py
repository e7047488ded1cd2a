"""``load-imbalance-filter``: drop endpoints far more loaded than the least-loaded one."""

from __future__ import annotations

from typing import Any

import pytest

from epp.errors import ConfigError
from epp.framework.scheduling import CycleState
from epp.plugins.inflight.producer import INFLIGHT_LOAD_KEY


def kept(filter_: Any, make_request: Any, endpoints: list[Any], cycle: CycleState | None = None) -> list[str]:
    return [ep.name for ep in filter_.filter(cycle or CycleState(), make_request(), endpoints)]


@pytest.mark.parametrize(
    ("loads", "expected"),
    [
        pytest.param([0, 9], ["e0"], id="over both thresholds is dropped (9 > 0+8 and 9 > 0*1.5)"),
        pytest.param([0, 8], ["e0", "e1"], id="at the absolute threshold is kept"),
        pytest.param([20, 29], ["e0", "e1"], id="over the absolute but within the relative threshold is kept"),
        pytest.param([2, 9], ["e0", "e1"], id="within the absolute but over the relative threshold is kept"),
        pytest.param([20, 29, 30, 40], ["e0", "e1", "e2"], id="only endpoints over both thresholds go"),
        pytest.param([100, 100, 100], ["e0", "e1", "e2"], id="equal load keeps all"),
        pytest.param([50, 3, 10, 70], ["e1", "e2"], id="the least loaded is found anywhere in the list"),
    ],
)
def test_both_thresholds_must_be_exceeded_to_drop(create: Any, make_endpoint: Any, make_request: Any,
                                                  loads: list[int], expected: list[str]) -> None:
    filter_ = create("load-imbalance-filter")  # absoluteThreshold 8, relativeThreshold 1.5
    endpoints = [make_endpoint(f"e{i}", waiting_queue_size=load) for i, load in enumerate(loads)]
    assert kept(filter_, make_request, endpoints) == expected


def test_scraped_load_is_running_plus_waiting(create: Any, make_endpoint: Any, make_request: Any) -> None:
    filter_ = create("load-imbalance-filter", {"absoluteThreshold": 2, "relativeThreshold": 1.0})
    endpoints = [make_endpoint("a", running_requests_size=1, waiting_queue_size=1),
                 make_endpoint("b", running_requests_size=3, waiting_queue_size=2)]
    assert kept(filter_, make_request, endpoints) == ["a"]


async def test_load_is_the_larger_of_in_flight_and_scraped(create: Any, make_endpoint: Any, make_request: Any,
                                                           routed: Any) -> None:
    producer = create("inflight-load-producer")
    filter_ = create("load-imbalance-filter", {"absoluteThreshold": 2, "relativeThreshold": 1.0})
    a = make_endpoint("a", running_requests_size=1)  # scrape says 1; 5 routed since -> 5
    b = make_endpoint("b", running_requests_size=4)  # scrape says 4; nothing routed -> 4
    c = make_endpoint("c", waiting_queue_size=1)
    for i in range(5):
        producer.pre_request(CycleState(), make_request(request_id=str(i)), routed(a))
    cycle = CycleState()
    await producer.prepare_data(cycle, make_request(), [a, b, c])
    assert INFLIGHT_LOAD_KEY in cycle
    # loads: a=max(5,1)=5, b=max(0,4)=4, c=max(0,1)=1 -> ceiling max(1+2, 1*1.0) = 3
    assert kept(filter_, make_request, [a, b, c], cycle) == ["c"]


def test_the_least_loaded_endpoint_is_always_kept(create: Any, make_endpoint: Any, make_request: Any) -> None:
    filter_ = create("load-imbalance-filter", {"absoluteThreshold": 0, "relativeThreshold": 1.0})
    endpoints = [make_endpoint("a", waiting_queue_size=5), make_endpoint("b", waiting_queue_size=6)]
    assert kept(filter_, make_request, endpoints) == ["a"]
    assert kept(filter_, make_request, endpoints[1:]) == ["b"]
    assert kept(filter_, make_request, []) == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        pytest.param({"absoluteThreshold": -1}, "absoluteThreshold", id="a negative absolute threshold"),
        pytest.param({"relativeThreshold": 0.9}, "relativeThreshold", id="a relative threshold below 1"),
    ],
)
def test_invalid_parameters_name_the_field(create: Any, params: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        create("load-imbalance-filter", params)
    assert err.value.field == f"plugins[0].parameters.{field}"
