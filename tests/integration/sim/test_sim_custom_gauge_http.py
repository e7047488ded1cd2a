"""Custom gauges on /metrics: set at start (``--custom-gauge``) and changed with ``POST /sim/gauge``."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from sim_http_helpers import post_json, sample, scrape  # type: ignore[import-not-found]

from epp.sim.config import EngineKind

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


async def test_gauges_given_at_start_are_on_the_page(sim_server_factory: Any, http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory(custom_gauges=(("epp_test_backlog", 7.0), ("vendor:depth", 0.25)))
    families = await scrape(http, server.url)
    assert families["epp_test_backlog"].type == "gauge"
    assert sample(families, "epp_test_backlog", model_name=MODEL) == 7.0
    assert sample(families, "vendor:depth", model_name=MODEL) == 0.25
    # The engine's own series are still there.
    assert sample(families, "vllm:num_requests_waiting", model_name=MODEL) == 0.0


async def test_post_changes_and_adds_gauges(sim_server_factory: Any, http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory(custom_gauges=(("epp_test_backlog", 7.0),))
    status, body = await post_json(http, server.url + "/sim/gauge", {"name": "epp_test_backlog", "value": 2})
    assert (status, body) == (200, {"name": "epp_test_backlog", "value": 2.0})
    status, _ = await post_json(http, server.url + "/sim/gauge", {"name": "fresh_gauge", "value": -4.5})
    assert status == 200
    families = await scrape(http, server.url)
    assert sample(families, "epp_test_backlog", model_name=MODEL) == 2.0
    assert sample(families, "fresh_gauge", model_name=MODEL) == -4.5
    async with http.get(server.url + "/sim/gauge") as response:
        assert await response.json() == {"epp_test_backlog": 2.0, "fresh_gauge": -4.5}


async def test_sglang_page_carries_the_gauge_too(sim_server_factory: Any, http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory(engine=EngineKind.SGLANG, custom_gauges=(("epp_test_backlog", 1.0),))
    assert sample(await scrape(http, server.url), "epp_test_backlog", model_name=MODEL) == 1.0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "bad-name", "value": 1}, "name"),
        ({"name": "", "value": 1}, "name"),
        ({"value": 1}, "name"),
        ({"name": "vllm:num_requests_running", "value": 1}, "name"),
        ({"name": "ok_name", "value": "3"}, "value"),
        ({"name": "ok_name", "value": True}, "value"),
        ({"name": "ok_name"}, "value"),
        ({"name": "ok_name", "value": None}, "value"),
        # JSON has no infinity; an overflowing literal is refused as a body, so no param.
        ({"name": "ok_name", "value": 1e999}, None),
    ],
    ids=["dash", "empty name", "no name", "a page metric", "string value", "boolean", "no value", "null",
         "infinite"],
)
async def test_bad_gauge_updates_are_400_and_change_nothing(sim_server_factory: Any, http: aiohttp.ClientSession,
                                                            body: dict[str, Any], param: str | None) -> None:
    server = await sim_server_factory(custom_gauges=(("epp_test_backlog", 7.0),))
    status, answer = await post_json(http, server.url + "/sim/gauge", body)
    assert status == 400 and answer["error"]["param"] == param
    families = await scrape(http, server.url)
    assert sample(families, "epp_test_backlog", model_name=MODEL) == 7.0
    assert "ok_name" not in families


async def test_body_that_is_not_json_is_400(sim_server_factory: Any, http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory()
    async with http.post(server.url + "/sim/gauge", data=b"not json") as response:
        assert response.status == 400
