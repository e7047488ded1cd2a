"""SLO-aware routing through the real request path: ext_proc stream → director → SLO plugins → simulators.

The test plays Envoy with ``ExtProcClient``: it sends a request to the in-process picker,
forwards it to the real simulator the picker chose (``epp.sim.SimServer``), and streams the
simulator's answer back through the ext_proc stream chunk by chunk, as Envoy would. The
picker runs the shipped ``config/slo-aware.yaml`` (scraping the simulators), so the
latency objectives, the profile handler, the predictor, the tracker and the metrics are
all the ones a user gets. What is asserted is what a user sees: immediate responses,
``/debug/decisions``, ``/debug/state``, ``/debug/predictor`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from epp.server.app import PickerServer, ServeOptions
from epp.sim import FaultMode, SimConfig, SimServer
from epp.testing import ExtProcClient
from epp.testing.envoy_stream import ScriptedStream, body_message, request_headers_message, response_headers_message
from epp.testing.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
SLO_CONFIG = (REPO / "config" / "slo-aware.yaml").read_text()
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
# A good pair of objectives: any simulator meets them, so nothing is refused or shed.
LOOSE = {"x-slo-ttft-ms": "5000", "x-slo-tpot-ms": "1000"}

# The default scoring without the SLO plugins: no predictor anywhere.
NO_PREDICTOR_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: prefix-cache-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: prefix-cache-scorer
  - pluginRef: max-score-picker
"""


def slo_config(**producer_params: Any) -> str:
    """The shipped SLO config with parameters added to ``predicted-latency-producer``."""
    doc = yaml.safe_load(SLO_CONFIG)
    for plugin in doc["plugins"]:
        if plugin["type"] == "predicted-latency-producer":
            plugin["parameters"] = {**plugin.get("parameters", {}), **producer_params}
    return yaml.safe_dump(doc)


def streamed(prompt: str, max_tokens: int = 6) -> bytes:
    return orjson.dumps({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                         "stream_options": {"include_usage": True}})


# --- simulators and pickers ---------------------------------------------------------------------


@pytest.fixture
async def sims() -> AsyncIterator[list[SimServer]]:
    # Half real time: a short streamed request takes tens of milliseconds.
    servers = [SimServer(SimConfig(port=0, time_scale=0.5, seed=i)) for i in range(2)]
    for server in servers:
        await server.start()
    yield servers
    for server in servers:
        await server.stop()


PickerFactory = Callable[..., Awaitable[PickerServer]]


@pytest.fixture
async def start_slo_picker(sims: list[SimServer]) -> AsyncIterator[PickerFactory]:
    """Start a picker over the simulators; each is stopped at the end unless the test stopped it."""
    servers: list[PickerServer] = []

    async def start(config: str = SLO_CONFIG) -> PickerServer:
        opts = ServeOptions(grpc_port=0, grpc_health_port=0, metrics_port=0, seed=7, config_text=config,
                            endpoints=",".join(f"127.0.0.1:{s.port}" for s in sims),
                            refresh_metrics_interval=0.02, scrape_timeout=0.5)
        server = PickerServer(opts)
        await server.start()
        servers.append(server)
        await eventually(lambda: all(ep.metrics.update_time > 0 for ep in server.pool.endpoints()),
                         what="first scrape of every simulator")
        return server

    yield start
    for server in servers:
        await server.stop(grace=0)  # a second stop (after the test's own) is harmless



# --- playing Envoy --------------------------------------------------------------------------------


@dataclass
class Outcome:
    status: int  # the picker's immediate response, else the model server's status
    destination: str | None
    request_id: str
    message: str = ""  # the immediate response's body


async def send_request(client: ExtProcClient, body: bytes, headers: Mapping[str, str],
                       request_id: str) -> tuple[ScriptedStream, Outcome | None]:
    """Send one request's headers and body; an ``Outcome`` when the picker answered by itself."""
    stream = client.stream()
    raw = [(":method", b"POST"), (":path", b"/v1/completions"), (":authority", b"gateway"),
           ("content-type", b"application/json"), ("x-request-id", request_id.encode()),
           *((k, v.encode()) for k, v in headers.items())]
    await stream.send(request_headers_message(raw))
    await stream.send(body_message(body, end_of_stream=True))
    await stream.wait_for(lambda r: r.HasField("request_headers") or r.HasField("immediate_response"))
    immediate = stream.result.immediate
    if immediate is not None:
        await stream.close()
        return stream, Outcome(int(immediate.status.code), None, request_id, immediate.body.decode())
    return stream, None


async def proxy(client: ExtProcClient, http: aiohttp.ClientSession, body: bytes,
                headers: Mapping[str, str] | None = None, *, request_id: str,
                disconnect_after_chunks: int | None = None) -> Outcome:
    """One request as Envoy runs it: route, forward to the chosen simulator, stream the answer back.

    ``disconnect_after_chunks``: the client goes away after that many response chunks (the
    ext_proc stream is reset, as Envoy does when its downstream disconnects)."""
    stream, refused = await send_request(client, body, headers or {}, request_id)
    if refused is not None:
        return refused
    destination = stream.result.destination
    assert destination is not None, stream.result.responses
    async with http.post(f"http://{destination}/v1/completions", data=body,
                         headers={"content-type": "application/json"}) as response:
        await stream.send(response_headers_message(
            {":status": str(response.status), "content-type": response.headers.get("content-type", "")}))
        seen = 0
        async for chunk in response.content.iter_any():
            if disconnect_after_chunks is not None and seen >= disconnect_after_chunks:
                await stream.abort()
                return Outcome(response.status, destination, request_id)
            await stream.send(body_message(chunk, end_of_stream=False, request=False))
            seen += 1
    await stream.send(body_message(b"", end_of_stream=True, request=False))
    await stream.close()
    return Outcome(response.status, destination, request_id)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def admin_json(server: PickerServer, path: str) -> Any:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{server.metrics_port}{path}") as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def metric_samples(server: PickerServer) -> list[tuple[str, dict[str, str], float]]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{server.metrics_port}/metrics") as response:
        text = await response.text()
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def metric_sum(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(value for sample_name, sample_labels, value in samples
               if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()))


def predictor_view(state: dict[str, Any]) -> dict[str, Any]:
    """The one predictor's section of ``/debug/predictor``."""
    assert state["enabled"] is True
    (view,) = state["predictors"].values()
    assert isinstance(view, dict)
    return view


def plugin_sizes(state: dict[str, Any], plugin_type: str) -> dict[str, int]:
    """``/debug/state``'s sizes of the one plugin of ``plugin_type`` (keys are ``name/type``)."""
    (sizes,) = [v for k, v in state["plugins"].items() if k.endswith(f"/{plugin_type}")]
    assert isinstance(sizes, dict)
    return sizes


# --- objective headers ----------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "value"), [
    ("x-slo-ttft-ms", "-1"),
    ("x-slo-ttft-ms", "abc"),
    ("x-slo-ttft-ms", "nan"),
    ("x-slo-ttft-ms", "inf"),
    ("x-slo-tpot-ms", "0"),
    ("x-slo-tpot-ms", "-0.5"),
])
async def test_a_bad_objective_header_is_refused_with_400_naming_it(
        start_slo_picker: PickerFactory, http: aiohttp.ClientSession, header: str, value: str) -> None:
    server = await start_slo_picker()
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        outcome = await proxy(envoy, http, streamed("hi"), {**LOOSE, header: value}, request_id="bad-objective")
    assert outcome.status == 400
    assert outcome.destination is None
    assert header in outcome.message
    # Refused before any bookkeeping: nothing is tracked, nothing was learnt.
    state = await admin_json(server, "/debug/state")
    assert plugin_sizes(state, "slo-request-tracker") == {"endpoints": 0, "requests": 0}
    assert predictor_view(await admin_json(server, "/debug/predictor"))["samples"] == 0


@pytest.mark.parametrize("headers", [
    {"x-slo-ttft-ms": "500"},
    {"x-slo-tpot-ms": "2.5"},
    {"x-slo-ttft-ms": " 250 ", "x-slo-tpot-ms": "40"},
    {"x-slo-ttft-ms": ""},  # empty is absent
])
async def test_good_objective_headers_are_routed_and_served(
        start_slo_picker: PickerFactory, sims: list[SimServer], http: aiohttp.ClientSession,
        headers: dict[str, str]) -> None:
    server = await start_slo_picker()
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        outcome = await proxy(envoy, http, streamed("hi"), headers, request_id="good-objective")
    assert outcome.status == 200
    assert outcome.destination in {f"127.0.0.1:{s.port}" for s in sims}


# --- profile selection ----------------------------------------------------------------------------


async def test_requests_with_objectives_run_the_slo_profile_and_the_rest_the_default_one(
        start_slo_picker: PickerFactory, http: aiohttp.ClientSession) -> None:
    server = await start_slo_picker()
    cases = {"with-ttft": {"x-slo-ttft-ms": "800"}, "with-tpot": {"x-slo-tpot-ms": "80"}, "with-both": LOOSE,
             "without": {}}
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        for request_id, headers in cases.items():
            assert (await proxy(envoy, http, streamed("hi"), headers, request_id=request_id)).status == 200
    for request_id in ("with-ttft", "with-tpot", "with-both"):
        trace = await admin_json(server, f"/debug/decisions/{request_id}")
        assert list(trace["profiles"]) == ["slo-aware"], trace
        profile = trace["profiles"]["slo-aware"]
        assert [f["plugin"].split("/")[-1] for f in profile["filters"]] == ["slo-headroom-tier-filter"]
        scorers = {s["plugin"].split("/")[-1] for s in profile["scorers"]}
        assert scorers == {"prefix-cache-scorer", "latency-scorer"}
    trace = await admin_json(server, "/debug/decisions/without")
    assert list(trace["profiles"]) == ["default"], trace
    scorers = {s["plugin"].split("/")[-1] for s in trace["profiles"]["default"]["scorers"]}
    assert scorers == {"queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer", "prefill-load-scorer"}


# --- tracker and in-flight counts -----------------------------------------------------------------


async def test_tracker_and_in_flight_counts_return_to_zero_after_completions_errors_and_disconnects(
        start_slo_picker: PickerFactory, sims: list[SimServer], http: aiohttp.ClientSession) -> None:
    server = await start_slo_picker()
    outcomes: list[Outcome] = []
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        # While requests are open the tracker holds them (so "zero" below is not vacuous).
        held = [await send_request(envoy, streamed(f"held {i}"), LOOSE, f"held-{i}") for i in range(3)]
        state = await admin_json(server, "/debug/state")
        assert plugin_sizes(state, "slo-request-tracker")["requests"] == 3
        assert plugin_sizes(state, "inflight-load-producer")["requests"] == 3
        for stream, _ in held:
            await stream.abort()  # the client went away before the model server answered
        for i in range(4):
            outcomes.append(await proxy(envoy, http, streamed(f"ok {i}", max_tokens=20), LOOSE,
                                        request_id=f"ok-{i}"))
        for sim in sims:
            await sim.set_fault(FaultMode.ERROR)
        for i in range(4):
            outcomes.append(await proxy(envoy, http, streamed(f"fail {i}"), LOOSE if i % 2 else {},
                                        request_id=f"fail-{i}"))
        for sim in sims:
            await sim.set_fault(FaultMode.OK)
        for i in range(4):
            outcomes.append(await proxy(envoy, http, streamed(f"gone {i}", max_tokens=40), LOOSE,
                                        request_id=f"gone-{i}", disconnect_after_chunks=2))
    assert [o.status for o in outcomes] == [200] * 4 + [500] * 4 + [200] * 4

    deadline = time.monotonic() + 5.0
    while True:
        state = await admin_json(server, "/debug/state")
        tracker, inflight = plugin_sizes(state, "slo-request-tracker"), plugin_sizes(state, "inflight-load-producer")
        if tracker["requests"] == 0 and inflight["requests"] == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert tracker == {"endpoints": 0, "requests": 0}
    assert inflight["requests"] == 0 and inflight["tokens"] == 0 and inflight["prefillBacklog"] == 0
    # Only the completed 200s trained the predictor: errors and disconnects teach nothing.
    assert predictor_view(await admin_json(server, "/debug/predictor"))["samples"] == 4


# --- /debug/predictor -----------------------------------------------------------------------------


async def test_debug_predictor_counts_one_sample_per_completed_streamed_request(
        start_slo_picker: PickerFactory, http: aiohttp.ClientSession) -> None:
    server = await start_slo_picker(slo_config(refitInterval="50ms"))
    before = predictor_view(await admin_json(server, "/debug/predictor"))
    assert before["samples"] == 0 and before["refits"] == 0
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        for i in range(6):
            headers = LOOSE if i % 2 else {}  # requests without objectives teach the predictor too
            assert (await proxy(envoy, http, streamed(f"learn {i}"), headers, request_id=f"learn-{i}")).status == 200
    view = predictor_view(await admin_json(server, "/debug/predictor"))
    assert view["samples"] == 6
    deadline = time.monotonic() + 5.0
    while view["refits"] == 0 or view["pendingSamples"]:  # the background refit loop folds them all in
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.05)
        view = predictor_view(await admin_json(server, "/debug/predictor"))
    assert view["heldOutError"]["ttftSamples"] == 6
    assert view["heldOutError"]["ttftMedianAbsPctError"] is not None
    assert len(view["endpointFactors"]) >= 1


async def test_debug_predictor_says_disabled_without_the_producer(
        start_slo_picker: PickerFactory, http: aiohttp.ClientSession) -> None:
    server = await start_slo_picker(NO_PREDICTOR_CONFIG)
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        assert (await proxy(envoy, http, streamed("hi"), LOOSE, request_id="plain")).status == 200
    assert await admin_json(server, "/debug/predictor") == {"enabled": False, "predictors": {}}


# --- metrics --------------------------------------------------------------------------------------

PER_MODEL_HISTOGRAMS = (
    "inference_objective_request_ttft_seconds",
    "inference_objective_request_tpot_seconds",
    "inference_objective_request_predicted_ttft_seconds",
    "inference_objective_request_predicted_tpot_seconds",
    "inference_objective_request_ttft_prediction_duration_seconds",
    "inference_objective_request_tpot_prediction_duration_seconds",
)


async def test_latency_metrics_carry_the_go_names_and_an_impossible_objective_counts_a_violation(
        start_slo_picker: PickerFactory, http: aiohttp.ClientSession) -> None:
    server = await start_slo_picker()
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as envoy:
        for i in range(3):
            assert (await proxy(envoy, http, streamed(f"met {i}", max_tokens=8), LOOSE,
                                request_id=f"met-{i}")).status == 200
        samples = await metric_samples(server)
        for name in PER_MODEL_HISTOGRAMS:
            assert metric_sum(samples, f"{name}_count", model_name=MODEL) == 3, name
        assert metric_sum(samples, "inference_objective_request_slo_violation_total") == 0
        # 1 ms to the first token: no simulator step is that short (6 ms simulated, 3 ms here).
        impossible = {"x-slo-ttft-ms": "1", "x-slo-tpot-ms": "1000"}
        for i in range(2):
            assert (await proxy(envoy, http, streamed(f"late {i}"), impossible,
                                request_id=f"late-{i}")).status == 200
    samples = await metric_samples(server)
    violations = "inference_objective_request_slo_violation_total"
    assert metric_sum(samples, violations, model_name=MODEL, type="ttft") == 2
    assert metric_sum(samples, violations, type="tpot") == 0
    assert metric_sum(samples, "inference_objective_request_ttft_seconds_count", model_name=MODEL) == 5


# --- persistence ----------------------------------------------------------------------------------


async def test_predictor_state_is_saved_at_stop_and_a_new_picker_starts_from_it(
        start_slo_picker: PickerFactory, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    state_path = tmp_path / "predictor" / "state.json"
    config = slo_config(statePath=str(state_path), refitInterval="1h")  # only the stop saves
    first = await start_slo_picker(config)
    async with ExtProcClient(f"127.0.0.1:{first.grpc_port}") as envoy:
        for i in range(5):
            assert (await proxy(envoy, http, streamed(f"remember {i}"), LOOSE,
                                request_id=f"remember-{i}")).status == 200
    assert not state_path.exists()
    await first.stop(grace=0)
    saved = json.loads(state_path.read_text())
    assert len(saved["samples"]) == 5
    assert saved["refits"] >= 1

    second = await start_slo_picker(config)
    view = predictor_view(await admin_json(second, "/debug/predictor"))
    assert view["samples"] == 5
    assert view["refits"] == saved["refits"]
    assert view["statePath"] == str(state_path)
    assert view["coefficients"]["ttft"] == dict(zip(saved["terms"]["ttft"], saved["coefficients"]["ttft"],
                                                    strict=True))
