"""The GIE conformance suite's two test plugins: header-based-testing-filter and the served verifier."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from epp.config.loader import load_config
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.pool import EndpointPool
from epp.errors import ConfigError, PickerError
from epp.framework.plugin import Handle
from epp.framework.requestcontrol import ResponseInfo
from epp.framework.scheduling import CycleState
from epp.plugins import default_registry
from epp.plugins.filters.header_testing import parse_selection

CONFORMANCE_CONFIG = Path(__file__).resolve().parents[2] / "config" / "conformance.yaml"


@pytest.fixture
def pool(make_endpoint: Any) -> list[Endpoint]:
    """Two 'pods' with three data-parallel ranks each, plus an IPv6 one."""
    return [make_endpoint(f"{ip}:{port}", address=ip, port=port)
            for ip in ("10.0.0.7", "10.0.0.8") for port in (3000, 3002, 3004)] + [
        make_endpoint("v6", address="fd00::1", port=3000)]


def kept(create: Any, make_request: Any, endpoints: list[Endpoint], header: str | None) -> list[str]:
    request = make_request()
    if header is not None:
        request.headers = {"test-epp-endpoint-selection": header}
    return [ep.name for ep in create("header-based-testing-filter").filter(CycleState(), request, endpoints)]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("10.0.0.8:3002", ["10.0.0.8:3002"], id="ip:port keeps exactly that rank"),
        pytest.param("10.0.0.8", ["10.0.0.8:3000", "10.0.0.8:3002", "10.0.0.8:3004"], id="ip keeps every rank"),
        pytest.param("10.0.0.8:3004, 10.0.0.7:3000", ["10.0.0.8:3004", "10.0.0.7:3000"], id="header order, spaces"),
        pytest.param("10.0.0.7:3000,10.0.0.7:3004", ["10.0.0.7:3000", "10.0.0.7:3004"], id="two ranks of one ip"),
        pytest.param("10.0.0.7:3000,10.0.0.7,10.0.0.7:3000", ["10.0.0.7:3000", "10.0.0.7:3002", "10.0.0.7:3004"],
                     id="each endpoint once"),
        pytest.param("10.0.0.7:9999,10.9.9.9,not-an-ip,10.0.0.8:x", [], id="unknown entries match nothing"),
        pytest.param("10.0.0.7:", ["10.0.0.7:3000", "10.0.0.7:3002", "10.0.0.7:3004"], id="empty port is ip only"),
        pytest.param("fd00::1", ["v6"], id="bare ipv6"),
        pytest.param("[fd00:0::1]:3000", ["v6"], id="bracketed ipv6 with port, any spelling"),
        pytest.param("[fd00::1]:3002", [], id="ipv6 with another port"),
        pytest.param(" , ,", [], id="only separators keeps nothing"),
        pytest.param("", [], id="blank header keeps nothing"),
        pytest.param(None, [], id="missing header keeps nothing"),
    ],
)
def test_header_based_testing_filter_keeps_what_the_header_names(
        create: Any, make_request: Any, pool: list[Endpoint], header: str | None, expected: list[str]) -> None:
    assert kept(create, make_request, pool, header) == expected


def test_header_based_testing_filter_does_not_mutate_its_input(create: Any, make_request: Any,
                                                              pool: list[Endpoint]) -> None:
    before = list(pool)
    kept(create, make_request, pool, "10.0.0.8:3002")
    assert pool == before


def test_parse_selection_follows_go_split_host_port() -> None:
    assert parse_selection("10.0.0.1, 10.0.0.2:80,[::1]:81,::2,") == [
        ("10.0.0.1", None), ("10.0.0.2", 80), ("::1", 81), ("::2", None)]


def test_header_based_testing_filter_takes_no_parameters(create: Any) -> None:
    with pytest.raises(ConfigError):
        create("header-based-testing-filter", {"header": "x"})


def served_headers(create: Any, make_request: Any, response_headers: dict[str, str]) -> list[tuple[str, str]]:
    response = ResponseInfo(status=200, headers=response_headers)
    create("destination-endpoint-served-verifier").response_received(make_request(), response)
    return response.set_headers


def test_served_verifier_echoes_the_endpoint_the_data_plane_reports(create: Any, make_request: Any) -> None:
    headers = served_headers(create, make_request, {"x-gateway-destination-endpoint-served": "10.0.0.7:3002"})
    assert headers == [("x-conformance-test-served-endpoint", "10.0.0.7:3002")]


@pytest.mark.parametrize("reported", [None, "", "  "])
def test_served_verifier_reports_a_failure_when_the_data_plane_says_nothing(
        create: Any, make_request: Any, reported: str | None) -> None:
    response_headers = {} if reported is None else {"x-gateway-destination-endpoint-served": reported}
    assert served_headers(create, make_request, response_headers) == [
        ("x-conformance-test-served-endpoint", "fail: missing destination endpoint served metadata")]


def test_the_conformance_config_routes_by_the_header_and_refuses_without_it(
        make_request: Any, pool: list[Endpoint]) -> None:
    config = load_config(CONFORMANCE_CONFIG.read_text(), default_registry(),
                         Handle(pool=EndpointPool(), rng=random.Random(1)))
    assert [type(p).__name__ for p in config.response_received] == ["DestinationEndpointServedVerifier"]
    request = make_request()
    request.headers = {"test-epp-endpoint-selection": "10.0.0.8:3004"}
    for _ in range(20):
        result = config.scheduler.schedule(CycleState(), request, pool)
        assert [ep.name for ep in result.primary.endpoints] == ["10.0.0.8:3004"]
    with pytest.raises(PickerError) as refused:
        config.scheduler.schedule(CycleState(), make_request(), pool)
    assert refused.value.status_code == 429
