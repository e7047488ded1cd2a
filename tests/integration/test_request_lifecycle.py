"""Request-lifecycle plugins, decisions and health, driven through the ext_proc server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from epp.plugins.inflight.producer import InFlightLoadProducer
from epp.server.app import PickerServer
from epp.testing import ExtProcClient
from epp.testing.envoy_stream import body_message, request_headers_message, response_headers_message

PickerFactory = Callable[..., Awaitable[PickerServer]]
MODEL = "meta-llama/Llama-3.1-8B-Instruct"

PREFIX_AND_LOAD_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: token-load-scorer
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: token-load-scorer
    weight: 1
  - pluginRef: prefix-cache-scorer
    weight: 5
dataLayer:
  sources: []
"""

SYSTEM = "You are a careful assistant that answers questions about shipping policies. " * 30


def chat(question: str) -> bytes:
    return orjson.dumps({"model": MODEL, "max_tokens": 4,
                         "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]})


def tracker(server: PickerServer) -> InFlightLoadProducer:
    plugin = server.config.plugins["inflight-load-producer"]  # type: ignore[union-attr]
    assert isinstance(plugin, InFlightLoadProducer)
    return plugin


def in_flight(server: PickerServer) -> int:
    return sum(tracker(server).load.requests(ep.name) for ep in server.pool.endpoints())


async def test_in_flight_count_is_released_when_envoy_aborts_the_stream(start_picker: PickerFactory) -> None:
    server = await start_picker(config=PREFIX_AND_LOAD_CONFIG)
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        result = await envoy.exchange(chat("hello"), path="/v1/chat/completions", abort_after_request=True)
        assert result.destination is not None
        for _ in range(100):
            if in_flight(server) == 0:
                break
            await asyncio.sleep(0.01)
    assert in_flight(server) == 0


async def test_in_flight_count_is_held_while_the_response_streams(start_picker: PickerFactory) -> None:
    server = await start_picker(config=PREFIX_AND_LOAD_CONFIG)
    load = tracker(server).load
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy, envoy.stream() as stream:
        headers = [(":method", b"POST"), (":path", b"/v1/chat/completions"), (":authority", b"gateway"),
                   ("content-type", b"application/json")]
        await stream.send(request_headers_message(headers))
        await stream.send(body_message(chat("hello"), end_of_stream=True))
        routed = await stream.wait_for(lambda r: r.HasField("request_headers"))
        assert routed is not None and stream.result.destination is not None
        destination = stream.result.destination
        assert load.requests(destination) == 1
        assert load.prefill_backlog(destination) > 0  # no first byte yet: still prefilling

        await stream.send(response_headers_message({"content-type": "text/event-stream"}))
        await stream.wait_for(lambda r: r.HasField("response_headers"))
        assert load.requests(destination) == 1

        await stream.send(body_message(b'data: {"choices":[{"text":"hi"}]}\n\n', False, request=False))
        await stream.wait_for(lambda r: r.HasField("response_body"))
        assert load.requests(destination) == 1  # held while the response streams
        assert load.prefill_backlog(destination) == 0  # the first byte ended the prefill

        await stream.send(body_message(b"data: [DONE]\n\n", True, request=False))
        await stream.close()
    assert in_flight(server) == 0
    assert load.tokens(destination) == 0


async def test_requests_sharing_a_prefix_go_to_the_same_endpoint(start_picker: PickerFactory) -> None:
    server = await start_picker(config=PREFIX_AND_LOAD_CONFIG)
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        destinations = []
        for i in range(6):
            result = await envoy.exchange(chat(f"question {i}"), path="/v1/chat/completions",
                                          response_headers={"content-type": "application/json"},
                                          response_chunks=[b"{}"])
            destinations.append(result.destination)
    assert len(set(destinations)) == 1


async def test_decision_log_explains_a_request(start_picker: PickerFactory) -> None:
    server = await start_picker(config=PREFIX_AND_LOAD_CONFIG)
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        await envoy.exchange(chat("first"), path="/v1/chat/completions", headers={"x-request-id": "req-1"})
        await envoy.exchange(chat("second"), path="/v1/chat/completions", headers={"x-request-id": "req-2"})
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{server.metrics_port}/debug/decisions/req-2") as response:
            decision = await response.json()
        async with session.get(f"http://127.0.0.1:{server.metrics_port}/debug/decisions/nope") as response:
            assert response.status == 404
    profile = decision["profiles"]["default"]
    scorers = {s["plugin"]: s for s in profile["scorers"]}
    prefix = scorers["prefix-cache-scorer/prefix-cache-scorer"]
    assert prefix["weight"] == 5
    destination = decision["destination"][0]
    assert prefix["scores"][destination] > 0.9  # req-1 left the shared system prompt there
    others = [score for name, score in prefix["scores"].items() if name != destination]
    assert others == [0.0] * len(others)
    assert profile["totals"][destination] == max(profile["totals"].values())
    assert sorted(decision["candidates"]) == sorted(ep.name for ep in server.pool.endpoints())


@pytest.mark.parametrize("service", ["liveness", "readiness", "", "envoy.service.ext_proc.v3.ExternalProcessor"])
async def test_grpc_health_reports_serving_on_both_ports(picker: PickerServer, service: str) -> None:
    for port in (picker.grpc_health_port, picker.grpc_port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_draining_server_reports_not_ready(picker: PickerServer) -> None:
    await picker.health.set_ready(False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{picker.grpc_health_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        readiness = await stub.Check(health_pb2.HealthCheckRequest(service="readiness"))
        liveness = await stub.Check(health_pb2.HealthCheckRequest(service="liveness"))
    assert readiness.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert liveness.status == health_pb2.HealthCheckResponse.SERVING
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{picker.metrics_port}/readyz") as response:
        assert response.status == 503


async def test_request_metrics_are_recorded_with_model_labels(picker: PickerServer, envoy: ExtProcClient) -> None:
    body = orjson.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 3})
    await envoy.exchange(body, response_headers={"content-type": "application/json"},
                         response_chunks=[b'{"model":"m","usage":{"prompt_tokens":5,"completion_tokens":3}}'])
    await envoy.exchange(b"{not json")
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{picker.metrics_port}/metrics") as response:
        text = await response.text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    models = (("model_name", MODEL), ("target_model_name", MODEL))
    assert samples[("inference_objective_request_total", tuple(sorted((*models, ("priority", "0")))))] == 1.0
    assert samples[("inference_objective_input_tokens_sum", models)] == 5.0
    assert samples[("inference_objective_output_tokens_sum", models)] == 3.0
    assert samples[("inference_objective_running_requests", (("model_name", MODEL),))] == 0.0
    errors = {labels: v for (name, labels), v in samples.items() if name == "inference_objective_request_error_total"}
    assert [dict(labels)["error_code"] for labels in errors] == ["BadRequest"]
    attempts = [dict(labels) for (name, labels) in samples if name == "inference_extension_scheduler_attempts_total"]
    assert attempts[0]["status"] == "success" and attempts[0]["pod_name"].startswith("10.0.0.")
    assert any(name == "inference_extension_plugin_duration_seconds_count"
               and dict(labels)["plugin_type"] == "queue-scorer" for name, labels in samples)
    assert not any(name.endswith("_created") for name, _ in samples)


async def test_pool_file_changes_take_effect_and_a_broken_file_keeps_the_pool(
        start_picker: PickerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text("endpoints: ['10.0.0.1:8000', '10.0.0.2:8000']\n")
    server = await start_picker(endpoints=None, pool_file=pool_file)
    assert [ep.name for ep in server.pool.endpoints()] == ["10.0.0.1:8000", "10.0.0.2:8000"]
    pool_file.write_text("endpoints: ['10.0.0.2:8000']\n")
    for _ in range(100):
        if len(server.pool.endpoints()) == 1:
            break
        await asyncio.sleep(0.02)
    assert [ep.name for ep in server.pool.endpoints()] == ["10.0.0.2:8000"]
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        seen = {(await envoy.exchange(chat("x"), path="/v1/chat/completions")).destination for _ in range(10)}
    assert seen == {"10.0.0.2:8000"}
    caplog.set_level(logging.ERROR, logger="epp.datalayer.poolsource")
    pool_file.write_text("endpoints: [{address: 10.0.0.9}]\n")  # no port: invalid
    for _ in range(100):  # until the watcher has read the broken file and said so
        if any(r.name == "epp.datalayer.poolsource" for r in caplog.records):
            break
        await asyncio.sleep(0.02)
    assert any("10.0.0.9" in r.getMessage() or "port" in r.getMessage() for r in caplog.records), caplog.text
    assert [ep.name for ep in server.pool.endpoints()] == ["10.0.0.2:8000"]


@pytest.mark.parametrize(
    ("option", "value", "flag"),
    [
        ("refresh_metrics_interval", 0.0, "--refresh-metrics-interval"),
        ("scrape_timeout", -1.0, "--scrape-timeout"),
        ("unready_after_failures", 0, "--unready-after-failures"),
    ],
)
def test_impossible_options_are_config_errors_naming_the_flag(option: str, value: float, flag: str) -> None:
    from epp.errors import ConfigError
    from epp.server.app import ServeOptions

    options: dict[str, Any] = {option: value}  # each option has its own type; the values are the test's
    server = PickerServer(ServeOptions(endpoints="10.0.0.1:8000", **options))
    with pytest.raises(ConfigError) as err:
        server.build()
    assert err.value.field == flag


async def test_during_the_shutdown_delay_readiness_is_off_but_requests_are_served(start_picker: PickerFactory) -> None:
    server = await start_picker()
    stopping = asyncio.create_task(server.stop(grace=0, delay=0.5))
    await asyncio.sleep(0.1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_health_port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="envoy.service.ext_proc.v3.ExternalProcessor"))
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        result = await envoy.exchange(chat("still there?"), path="/v1/chat/completions")
    assert result.destination is not None
    await stopping
