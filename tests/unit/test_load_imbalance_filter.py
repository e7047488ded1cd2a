"""``load-imbalance-filter``: drop endpoints whose queue is far longer than the shortest."""

from __future__ import annotations

from typing import Any

import pytest

from epp.datalayer.dispatch import account_dispatch
from epp.errors import ConfigError
from epp.framework.scheduling import CycleState


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


def test_running_requests_are_not_load(create: Any, make_endpoint: Any, make_request: Any) -> None:
    filter_ = create("load-imbalance-filter", {"absoluteThreshold": 2, "relativeThreshold": 1.0})
    endpoints = [make_endpoint("a", running_requests_size=1), make_endpoint("b", running_requests_size=200)]
    assert kept(filter_, make_request, endpoints) == ["a", "b"]  # b is busy, not queueing


def test_requests_routed_since_the_last_scrape_count_as_queued(create: Any, make_endpoint: Any,
                                                               make_request: Any) -> None:
    filter_ = create("load-imbalance-filter")
    a, b = make_endpoint("a", update_time=1.0), make_endpoint("b", update_time=1.0)
    for _ in range(9):  # a burst inside one scrape interval, all to a
        account_dispatch(a, prompt_bytes=400)
    assert kept(filter_, make_request, [a, b]) == ["b"]


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
