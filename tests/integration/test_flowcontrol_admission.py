"""Admission through the real request path: ext_proc stream → director → flow controller.

Saturation is made controllable without timing: a ``concurrency-detector`` with room for
one request per endpoint saturates the pool while a routed request's response is still
open, and frees it the moment that response ends; the ``utilization-detector`` tests set
the endpoints' metrics directly (no scraping), as a model server's queue would.
Everything is observed the way Envoy would see it (the ext_proc answers) plus the
picker's own admin views (``/debug/flowcontrol``, ``/debug/state``, ``/metrics``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from epp.datalayer.endpoint import Metrics
from epp.errors import ConfigError
from epp.flowcontrol.saturation import ConcurrencyDetector
from epp.server.app import PickerServer
from epp.testing import ExtProcClient
from epp.testing.envoy_stream import ScriptedStream, body_message, request_headers_message, response_headers_message
from epp.testing.errors import error_message
from epp.testing.waiting import eventually

PickerFactory = Callable[..., Awaitable[PickerServer]]
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ONE_ENDPOINT = "10.0.0.1:8000"

OBJECTIVES = """\
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: interactive}
spec: {priority: 100, poolRef: {name: default}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: batch}
spec: {priority: -1, poolRef: {name: default}}
"""


def gated_config(flow_control: str = "{}", detector: str = "concurrency-detector",
                 detector_params: str = "{maxConcurrency: 1}", gate: bool = True,
                 extra_plugins: str = "") -> str:
    """A picker config whose saturation the test controls; ``gate=False`` keeps the legacy rule."""
    return f"""\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
{"featureGates: [flowControl]" if gate else ""}
plugins:
- type: queue-scorer
- type: {detector}
  parameters: {detector_params}
{extra_plugins}
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
saturationDetector:
  pluginRef: {detector}
{f"flowControl: {flow_control}" if gate else ""}
dataLayer:
  sources: []
"""


def completion(prompt: str = "hello") -> bytes:
    return orjson.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 4})


def write_objectives(path: Path, text: str) -> Path:
    """Write-then-rename, as the watcher expects a file to be replaced."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path



async def open_request(client: ExtProcClient, headers: Mapping[str, str] | None = None,
                       body: bytes | None = None) -> ScriptedStream:
    """Send one request's headers and whole body on a new stream, without waiting for the answer."""
    stream = client.stream()
    raw = [(":method", b"POST"), (":path", b"/v1/completions"), (":authority", b"gateway"),
           ("content-type", b"application/json"), *((k, v.encode()) for k, v in (headers or {}).items())]
    await stream.send(request_headers_message(raw))
    await stream.send(body_message(completion() if body is None else body, end_of_stream=True))
    return stream


def answered(stream: ScriptedStream) -> bool:
    return any(r.HasField("request_headers") or r.HasField("immediate_response") for r in stream.result.responses)


async def answer(stream: ScriptedStream, timeout: float = 5.0) -> str | int:
    """The destination the picker chose, or the status of its immediate response."""
    await stream.wait_for(lambda r: r.HasField("request_headers") or r.HasField("immediate_response"), timeout)
    if stream.result.status is not None:
        return stream.result.status
    destination = stream.result.destination
    assert destination is not None, stream.result.responses
    return destination


async def complete(stream: ScriptedStream) -> None:
    """The model server answers and the response ends: the request leaves the pool."""
    await stream.send(response_headers_message({"content-type": "application/json"}, end_of_stream=True))
    await stream.close()


async def admin_json(server: PickerServer, path: str) -> Any:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{server.metrics_port}{path}") as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def metric_sum(server: PickerServer, name: str, **labels: str) -> float:
    """Sum of every sample of ``name`` on ``/metrics`` whose labels include ``labels``."""
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{server.metrics_port}/metrics") as response:
        text = await response.text()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def queued(server: PickerServer) -> int:
    assert server.flow_controller is not None
    return server.flow_controller.queued_requests


async def wait_queued(server: PickerServer, count: int) -> None:
    await eventually(lambda: queued(server) == count, what=f"{count} requests queued")


def body_bytes_held(server: PickerServer) -> int:
    return int(server.debug_state()["requestBodyBytesHeld"])


def set_queue_depth(server: PickerServer, waiting: int) -> None:
    """What a scrape would write: every endpoint's waiting queue, fresh now."""
    for endpoint in server.pool.endpoints():
        endpoint.metrics = Metrics(waiting_queue_size=waiting, update_time=time.monotonic())


# --------------------------------------------------------------------------- waiting and flowing


async def test_a_request_waits_while_the_pool_is_full_and_is_routed_when_a_response_ends(
        start_picker: PickerFactory) -> None:
    server = await start_picker(endpoints=ONE_ENDPOINT, config=gated_config())
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        first = await open_request(envoy)
        assert await answer(first) == ONE_ENDPOINT  # the pool was idle: no wait
        second = await open_request(envoy, body=completion("second"))
        await eventually(lambda: queued(server) == 1, what="the second request queued")
        snapshot = await admin_json(server, "/debug/flowcontrol")
        assert snapshot["enabled"] is True and snapshot["queuedRequests"] == 1
        assert snapshot["queuedBytes"] == len(completion("second"))
        assert not answered(second)  # Envoy is still waiting for the picker
        await complete(first)
        assert await answer(second) == ONE_ENDPOINT
        assert queued(server) == 0
        await complete(second)


async def test_waiting_requests_flow_once_the_model_servers_queues_drain(start_picker: PickerFactory) -> None:
    server = await start_picker(endpoints="10.0.0.1:8000,10.0.0.2:8000", config=gated_config(
        detector="utilization-detector", detector_params="{queueDepthThreshold: 5, metricsStalenessThreshold: 1h}"))
    set_queue_depth(server, 10)  # twice the threshold: saturated
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        waiting = [await open_request(envoy, body=completion(f"p{i}")) for i in range(3)]
        await eventually(lambda: queued(server) == 3, what="three requests queued")
        snapshot = await admin_json(server, "/debug/flowcontrol")
        assert snapshot["saturation"] == pytest.approx(2.0)
        assert not any(answered(stream) for stream in waiting)
        set_queue_depth(server, 0)  # nobody calls notify: the controller's own polling sees it
        destinations = [await answer(stream) for stream in waiting]
        assert set(destinations) <= {"10.0.0.1:8000", "10.0.0.2:8000"}
        for stream in waiting:
            await complete(stream)
    assert queued(server) == 0


# --------------------------------------------------------------------------- capacity and TTL


async def test_a_request_beyond_max_requests_is_refused_with_429(start_picker: PickerFactory) -> None:
    server = await start_picker(endpoints=ONE_ENDPOINT, config=gated_config("{maxRequests: 1}"))
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        holder = await open_request(envoy)
        assert await answer(holder) == ONE_ENDPOINT
        waiter = await open_request(envoy)
        await eventually(lambda: queued(server) == 1, what="one request queued")
        refused = await open_request(envoy)
        assert await answer(refused) == 429
        immediate = refused.result.immediate
        assert immediate is not None
        assert error_message(immediate.body).startswith("inference error: ResourceExhausted - ")
        assert "maxRequests" in immediate.body.decode()
        assert not answered(waiter)  # the refusal did not disturb the queued request
        await complete(holder)
        assert await answer(waiter) == ONE_ENDPOINT
        await complete(waiter)
    assert await metric_sum(server, "inference_extension_flow_control_request_queue_duration_seconds_count",
                            outcome="RejectedCapacity") == 1


async def test_a_request_that_outlives_its_ttl_in_the_queue_gets_503(start_picker: PickerFactory) -> None:
    server = await start_picker(endpoints=ONE_ENDPOINT, config=gated_config("{defaultRequestTTL: 200ms}"))
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        holder = await open_request(envoy)
        assert await answer(holder) == ONE_ENDPOINT
        expired = await open_request(envoy)
        assert await answer(expired) == 503
        immediate = expired.result.immediate
        assert immediate is not None
        assert error_message(immediate.body).startswith("inference error: ServiceUnavailable - ")
        assert "TTL" in immediate.body.decode()
        assert queued(server) == 0
        await eventually(lambda: body_bytes_held(server) == 0, what="body budget given back")
        await complete(holder)
    assert await metric_sum(server, "inference_extension_flow_control_request_queue_duration_seconds_count",
                            outcome="EvictedTTL") == 1


# --------------------------------------------------------------------------- client gone


async def test_a_waiting_request_whose_client_goes_away_leaves_the_queue_and_frees_everything(
        start_picker: PickerFactory) -> None:
    server = await start_picker(endpoints=ONE_ENDPOINT, config=gated_config())
    body = completion("x" * 5000)
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        holder = await open_request(envoy)
        assert await answer(holder) == ONE_ENDPOINT
        waiter = await open_request(envoy, {"x-gateway-inference-fairness-id": "tenant-a"}, body)
        await eventually(lambda: queued(server) == 1, what="the request queued")
        assert body_bytes_held(server) == len(body)  # held while it waits
        assert await metric_sum(server, "inference_extension_flow_control_queue_size", fairness_id="tenant-a") == 1
        assert await metric_sum(server, "inference_extension_flow_control_queue_bytes") == len(body)

        await waiter.abort()  # Envoy resets the stream: the client went away

        await eventually(lambda: queued(server) == 0, what="the request left the queue")
        assert server.flow_controller is not None and server.flow_controller.queued_bytes == 0
        await eventually(lambda: body_bytes_held(server) == 0, what="body budget given back")
        snapshot = await admin_json(server, "/debug/flowcontrol")
        assert snapshot["queuedRequests"] == 0 and snapshot["queuedBytes"] == 0
        assert all(band["queuedRequests"] == 0 and band["flows"] == [] for band in snapshot["bands"])
        assert await metric_sum(server, "inference_extension_flow_control_queue_size") == 0
        assert await metric_sum(server, "inference_extension_flow_control_queue_bytes") == 0
        assert await metric_sum(server, "inference_extension_flow_control_request_queue_duration_seconds_count",
                                outcome="EvictedContextCancelled") == 1
        # The holder's capacity is not given to the gone request: the next one gets it.
        await complete(holder)
        after = await open_request(envoy)
        assert await answer(after) == ONE_ENDPOINT
        await complete(after)


# --------------------------------------------------------------------------- legacy rule, objectives


async def test_without_the_gate_sheddable_requests_get_429_only_while_saturated(
        start_picker: PickerFactory, tmp_path: Path) -> None:
    objectives = write_objectives(tmp_path / "objectives.yaml", OBJECTIVES)
    server = await start_picker(endpoints=ONE_ENDPOINT, config=gated_config(gate=False), objectives_file=objectives)
    assert server.flow_controller is None
    batch = {"x-gateway-inference-objective": "batch"}
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        idle = await envoy.exchange(completion(), headers=batch, abort_after_request=True)
        assert idle.destination == ONE_ENDPOINT  # not saturated: sheddable requests route too
        await eventually(lambda: body_bytes_held(server) == 0)
        holder = await open_request(envoy)
        assert await answer(holder) == ONE_ENDPOINT  # the pool is now full
        shed = await envoy.exchange(completion(), headers=batch)
        assert shed.status == 429
        assert shed.immediate is not None
        assert error_message(shed.immediate.body).startswith("inference error: ResourceExhausted - ")
        kept = await envoy.exchange(completion(), abort_after_request=True)  # priority 0: never shed
        assert kept.destination == ONE_ENDPOINT
        unknown = await envoy.exchange(completion(), headers={"x-gateway-inference-objective": "no-such-objective"},
                                       abort_after_request=True)
        assert unknown.destination == ONE_ENDPOINT  # an unknown objective is priority 0
        await complete(holder)
    state = await admin_json(server, "/debug/flowcontrol")
    assert state["enabled"] is False


async def test_the_objectives_watcher_applies_a_changed_priority(start_picker: PickerFactory, tmp_path: Path) -> None:
    objectives = write_objectives(tmp_path / "objectives.yaml", OBJECTIVES)
    server = await start_picker(endpoints=ONE_ENDPOINT, config=gated_config(gate=False), objectives_file=objectives)
    batch = {"x-gateway-inference-objective": "batch"}
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        holder = await open_request(envoy)
        assert await answer(holder) == ONE_ENDPOINT
        assert (await envoy.exchange(completion(), headers=batch)).status == 429
        write_objectives(objectives, OBJECTIVES.replace("priority: -1", "priority: 0"))
        await eventually(lambda: server.objectives.priority("batch") == 0, what="the watcher reloaded the file")
        routed = await envoy.exchange(completion(), headers=batch, abort_after_request=True)
        assert routed.destination == ONE_ENDPOINT
        await complete(holder)


async def test_an_invalid_objectives_file_fails_start_naming_the_field(
        start_picker: PickerFactory, tmp_path: Path) -> None:
    objectives = write_objectives(tmp_path / "objectives.yaml", OBJECTIVES.replace("priority: -1", "priority: high"))
    with pytest.raises(ConfigError) as error:
        await start_picker(endpoints=ONE_ENDPOINT, config=gated_config(), objectives_file=objectives)
    assert "spec.priority" in error.value.field
    assert "integer" in str(error.value)


async def test_a_fairness_policy_declared_among_the_plugins_is_not_the_profiles_picker(
        start_picker: PickerFactory) -> None:
    # Go configs declare the policies a band references in ``plugins``; a fairness policy
    # has a ``pick`` method too, but it must never be taken as the scheduling picker.
    config = gated_config("{priorityBands: [{priority: 0, fairnessPolicyRef: round-robin-fairness-policy}]}",
                          extra_plugins="- type: round-robin-fairness-policy")
    server = await start_picker(endpoints=ONE_ENDPOINT, config=config)
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        result = await envoy.exchange(completion(), abort_after_request=True)
    assert result.status is None, result.immediate
    assert result.destination == ONE_ENDPOINT


# --------------------------------------------------------------------------- client-sent headers


@pytest.mark.parametrize("value", ["-5", "abc"])
async def test_a_bad_slo_header_is_refused_with_400_naming_it(start_picker: PickerFactory, value: str) -> None:
    server = await start_picker(endpoints=ONE_ENDPOINT, config=gated_config())
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        result = await envoy.exchange(completion(), headers={"x-slo-ttft-ms": value})
    assert result.status == 400
    assert result.immediate is not None and "x-slo-ttft-ms" in result.immediate.body.decode()
    assert queued(server) == 0


WORKLOAD_AWARE = """{priorityBands: [{priority: 0, orderingPolicyRef: workload-aware-ordering-policy}]}"""
WORKLOAD_AWARE_PLUGIN = "- type: workload-aware-ordering-policy"


async def dispatch_order(server: PickerServer, envoy: ExtProcClient, criticalities: list[str]) -> list[str]:
    """Queue one request per criticality header value (in this order), then free capacity one
    request at a time; returns the header values in the order the picker routed them."""
    holder = await open_request(envoy)
    assert await answer(holder) == ONE_ENDPOINT
    streams = {}
    for value in criticalities:
        streams[value] = await open_request(envoy, {"x-workload-id": "team-a", "x-workload-criticality": value})
        await wait_queued(server, len(streams))
    order: list[str] = []
    current = holder
    while len(order) < len(criticalities):
        await complete(current)
        await eventually(lambda: sum(answered(s) for s in streams.values()) == len(order) + 1,
                         what="the next request routed")
        (value, current), = [(v, s) for v, s in streams.items() if answered(s) and v not in order]
        assert current.result.destination == ONE_ENDPOINT
        order.append(value)
    await complete(current)
    return order


async def test_criticality_orders_the_queue_and_an_out_of_range_value_counts_as_3(
        start_picker: PickerFactory) -> None:
    server = await start_picker(endpoints=ONE_ENDPOINT,
                                config=gated_config(WORKLOAD_AWARE, extra_plugins=WORKLOAD_AWARE_PLUGIN))
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        # "9" is out of range: no error, it ranks as 3, between 4 and 2.
        assert await dispatch_order(server, envoy, ["2", "9", "4"]) == ["4", "9", "2"]


async def test_ignoring_the_criticality_header_leaves_arrival_order(start_picker: PickerFactory) -> None:
    server = await start_picker(endpoints=ONE_ENDPOINT, honor_criticality_header=False,
                                config=gated_config(WORKLOAD_AWARE, extra_plugins=WORKLOAD_AWARE_PLUGIN))
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        assert await dispatch_order(server, envoy, ["1", "5", "3"]) == ["1", "5", "3"]


# --------------------------------------------------------------------------- nothing leaks


@dataclass
class Plan:
    objective: str | None
    fairness_id: str
    action: str  # "complete": wait, then finish the response; "abort-early": reset soon; "abort-late": after routing
    delay: float


def kind_of(stream: ScriptedStream) -> str:
    """How the picker answered: "routed", or the immediate response's status."""
    return "routed" if stream.result.status is None else str(stream.result.status)


async def run_one(envoy: ExtProcClient, plan: Plan, i: int, outcomes: Counter[str]) -> None:
    headers = {"x-gateway-inference-fairness-id": plan.fairness_id, "x-workload-id": plan.fairness_id}
    if plan.objective is not None:
        headers["x-gateway-inference-objective"] = plan.objective
    stream = await open_request(envoy, headers, completion(f"request {i} " + "y" * (i % 7) * 100))
    try:
        if plan.action == "abort-early":
            await asyncio.sleep(plan.delay)
            outcomes[kind_of(stream) if answered(stream) else "aborted-unanswered"] += 1
            await stream.abort()
            return
        await answer(stream, timeout=10)
        kind = kind_of(stream)
        outcomes[kind] += 1
        if kind != "routed":
            await stream.close()
            return
        await asyncio.sleep(plan.delay)
        if plan.action == "abort-late":
            await stream.abort()
        else:
            await complete(stream)
    finally:
        if not stream.ended.is_set():
            await stream.abort()


async def test_counters_return_to_zero_after_a_randomized_run(start_picker: PickerFactory, tmp_path: Path) -> None:
    objectives = write_objectives(tmp_path / "objectives.yaml", OBJECTIVES)
    flow_control = """{maxRequests: 10, defaultRequestTTL: 150ms, priorityBands: [
        {priority: 100, orderingPolicyRef: workload-aware-ordering-policy},
        {priority: -1, maxRequests: 4, fairnessPolicyRef: round-robin-fairness-policy}]}"""
    server = await start_picker(
        endpoints="10.0.0.1:8000,10.0.0.2:8000", objectives_file=objectives,
        config=gated_config(flow_control, detector_params="{maxConcurrency: 2}",
                            extra_plugins=WORKLOAD_AWARE_PLUGIN))
    rng = random.Random(20261130)
    plans = [Plan(objective=rng.choice(["interactive", "batch", None, "unknown"]),
                  fairness_id=rng.choice(["tenant-a", "tenant-b", "tenant-c"]),
                  action=rng.choices(["complete", "abort-early", "abort-late"], [6, 2, 1])[0],
                  delay=rng.uniform(0.0, 0.04))
             for _ in range(300)]
    outcomes: Counter[str] = Counter()
    concurrency = asyncio.Semaphore(16)

    async def limited(plan: Plan, i: int) -> None:
        async with concurrency:
            await run_one(envoy, plan, i, outcomes)

    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        async with asyncio.timeout(60):
            await asyncio.gather(*(limited(plan, i) for i, plan in enumerate(plans)))

    # Every kind of exit happened, so the zeros below are not vacuous.
    assert outcomes["routed"] > 0 and outcomes["429"] > 0 and outcomes["503"] > 0, outcomes
    assert set(outcomes) <= {"routed", "429", "503", "aborted-unanswered", "answered-before-abort"}, outcomes
    cancelled = await metric_sum(server, "inference_extension_flow_control_request_queue_duration_seconds_count",
                                 outcome="EvictedContextCancelled")
    assert cancelled > 0, outcomes

    assert server.flow_controller is not None
    await eventually(lambda: server.flow_controller is not None and server.flow_controller.queued_requests == 0)
    assert server.flow_controller.queued_bytes == 0
    await eventually(lambda: body_bytes_held(server) == 0, what="body budget given back")
    detector = server.config.saturation_detector if server.config is not None else None
    assert isinstance(detector, ConcurrencyDetector)
    await eventually(lambda: all(detector.in_flight(ep) == 0 for ep in server.pool.endpoints()),
                     what="in-flight load released")
    for name in ("inference_extension_flow_control_queue_size", "inference_extension_flow_control_queue_bytes",
                 "inference_objective_running_requests"):
        assert await metric_sum(server, name) == 0, name
    snapshot = await admin_json(server, "/debug/flowcontrol")
    assert snapshot["queuedRequests"] == 0 and snapshot["queuedBytes"] == 0
    assert all(band["queuedRequests"] == 0 and band["queuedBytes"] == 0 for band in snapshot["bands"])
    state = await admin_json(server, "/debug/state")
    assert state["flowControl"] == {"queuedRequests": 0, "queuedBytes": 0}
    assert state["requestBodyBytesHeld"] == 0
    # Each request that reached the queue left it exactly once, with the outcome its client saw.
    async def left(outcome: str) -> float:
        return await metric_sum(server, "inference_extension_flow_control_request_queue_duration_seconds_count",
                                outcome=outcome)

    # A request its client reset before seeing the answer may have left with any outcome, or
    # never reached the queue; every other request left exactly as its client was told.
    unseen = [await left("RejectedCapacity") - outcomes["429"], await left("EvictedTTL") - outcomes["503"],
              await left("Dispatched") - outcomes["routed"], cancelled]
    assert all(n >= 0 for n in unseen), unseen
    assert sum(unseen) <= outcomes["aborted-unanswered"], (unseen, outcomes)
    total = await metric_sum(server, "inference_extension_flow_control_request_queue_duration_seconds_count")
    assert total == sum(unseen) + outcomes["429"] + outcomes["503"] + outcomes["routed"]  # no other outcome
