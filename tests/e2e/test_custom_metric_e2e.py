"""A custom metric scored end to end: simulators expose ``epp_test_backlog`` (``--custom-gauge``),
``prometheus-metric`` scrapes it, ``metric-scorer`` ranks on it, and requests through real Envoy
go to the replica with the lowest backlog; when the gauges change (``POST /sim/gauge``), the
traffic follows."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import MODEL, SIM_ARGS, completion, post_many, wait_until  # type: ignore[import-not-found]

from epp.devstack.stack import Stack

GAUGE = "epp_test_backlog"
START = (40.0, 5.0, 20.0)  # replica 1 is lowest
REQUESTS = 6

CONFIG = f"""\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: metrics-data-source
- type: core-metrics-extractor
- name: backlog
  type: prometheus-metric
  parameters: {{metricName: {GAUGE}, labels: {{model_name: {MODEL}}}}}
- name: by-backlog
  type: metric-scorer
  parameters: {{metricName: {GAUGE}}}
- type: max-score-picker
dataLayer:
  sources:
  - pluginRef: metrics-data-source
    extractors:
    - pluginRef: core-metrics-extractor
    - pluginRef: backlog
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: by-backlog
  - pluginRef: max-score-picker
"""


class PerReplicaGauge(Stack):
    """A Stack whose simulators start with different values of the custom gauge."""

    def replica_args(self, index: int) -> list[str]:
        return ["--custom-gauge", f"{GAUGE}={START[index]}"]


@pytest.fixture(scope="module")
def gauge_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with PerReplicaGauge(tmp_path_factory.mktemp("custom-metric"), replicas=len(START), sim_args=SIM_ARGS,
                         config_text=CONFIG, picker_args=["--refresh-metrics-interval", "20ms"]) as stack:
        yield stack


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def scraped(stack: Stack) -> dict[str, float | None]:
    """The custom gauge per endpoint address as the picker sees it (``/debug/endpoints``)."""
    view = http_json(stack.admin_url + "/debug/endpoints")
    return {e["address"]: e["custom"].get(GAUGE, {}).get("value") for e in view["endpoints"]}


def expected(stack: Stack, values: tuple[float, ...]) -> dict[str, float | None]:
    return {stack.sim_hostport(i): v for i, v in enumerate(values)}


def upstreams(stack: Stack) -> list[str]:
    bodies = [completion(f"backlog {i}", max_tokens=2) for i in range(REQUESTS)]
    replies = asyncio.run(post_many(stack.url, bodies, concurrent=False))
    assert [r.status for r in replies] == [200] * REQUESTS, [r.body[:200] for r in replies]
    return [r.upstream for r in replies]


def test_requests_follow_the_lowest_custom_gauge(gauge_stack: Stack) -> None:
    stack = gauge_stack
    wait_until(lambda: scraped(stack) == expected(stack, START), timeout=15)
    assert upstreams(stack) == [stack.sim_hostport(1)] * REQUESTS

    # Replica 0 becomes the lowest; the picker sees it on its next scrapes and traffic moves.
    moved = (1.0, 90.0, 50.0)
    for i, value in enumerate(moved):
        answer = http_json(f"http://{stack.sim_hostport(i)}/sim/gauge", {"name": GAUGE, "value": value})
        assert answer == {"name": GAUGE, "value": value}
    wait_until(lambda: scraped(stack) == expected(stack, moved), timeout=15)
    assert upstreams(stack) == [stack.sim_hostport(0)] * REQUESTS
