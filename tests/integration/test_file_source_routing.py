"""A local JSON file, read by ``json-file-source`` and ``json-metric``, steers ``metric-scorer`` routing."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from epp.server.app import PickerServer
from epp.testing.envoy_stream import routed_to
from epp.testing.waiting import eventually

PickerFactory = Callable[..., Awaitable[PickerServer]]

# Nothing listens behind these addresses: the file is the only data source, so none is needed.
ENDPOINTS = ["10.0.0.1:8000", "10.0.0.2:8000"]


def config(path: Path) -> str:
    return f"""\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- name: node-status
  type: json-file-source
  parameters: {{path: "{path}"}}
- name: backlog
  type: json-metric
  parameters: {{key: backlog}}
- name: by-backlog
  type: metric-scorer
  parameters: {{metricName: backlog}}
- type: max-score-picker
dataLayer:
  sources:
  - pluginRef: node-status
    extractors:
    - pluginRef: backlog
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: by-backlog
  - pluginRef: max-score-picker
"""


def write_backlogs(path: Path, first: float, second: float) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps({ENDPOINTS[0]: {"backlog": first}, ENDPOINTS[1]: {"backlog": second}}))
    os.replace(tmp, path)  # atomic, as the source's docstring asks of writers


async def until_read(server: PickerServer, expected: dict[str, float]) -> None:
    def seen() -> dict[str, float]:
        return {ep.name: ep.custom["backlog"].value for ep in server.pool.endpoints() if "backlog" in ep.custom}
    await eventually(lambda: seen() == expected, what=f"backlog read from the file as {expected}")


async def route(server: PickerServer) -> str | None:
    return await routed_to(f"127.0.0.1:{server.grpc_port}")


async def test_requests_follow_the_lower_backlog_in_the_file(start_picker: PickerFactory, tmp_path: Path) -> None:
    path = tmp_path / "node-status.json"
    write_backlogs(path, 40.0, 5.0)
    server = await start_picker(endpoints=",".join(ENDPOINTS), config=config(path), refresh_metrics_interval=0.02)
    await until_read(server, {ENDPOINTS[0]: 40.0, ENDPOINTS[1]: 5.0})
    assert {await route(server) for _ in range(5)} == {ENDPOINTS[1]}

    # The file changes: routing follows it.
    write_backlogs(path, 1.0, 90.0)
    await until_read(server, {ENDPOINTS[0]: 1.0, ENDPOINTS[1]: 90.0})
    assert {await route(server) for _ in range(5)} == {ENDPOINTS[0]}


async def test_an_endpoint_whose_entry_lacks_the_field_loses_to_one_with_a_high_backlog(
        start_picker: PickerFactory, tmp_path: Path) -> None:
    # A missing value scores worst: no number must not read as "idle". The entry exists, so the
    # file was read fine and the endpoint stays ready; only its score suffers.
    path = tmp_path / "node-status.json"
    path.write_bytes(orjson.dumps({ENDPOINTS[0]: {"backlog": 80.0}, ENDPOINTS[1]: {"temperature": 50}}))
    server = await start_picker(endpoints=",".join(ENDPOINTS), config=config(path), refresh_metrics_interval=0.02)
    await until_read(server, {ENDPOINTS[0]: 80.0})
    assert {await route(server) for _ in range(5)} == {ENDPOINTS[0]}
    assert all(ep.ready for ep in server.pool.endpoints())
