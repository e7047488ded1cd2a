"""Client-sent control headers cannot steer a request (defects 5 and 8), through real Envoy.

Defect 5: changing the picker's destination header mutation from overwrite to append
still passed every test. Here Envoy does *not* strip anything (``strip_headers=[]``), so
only the picker's overwrite stands between a client's own ``x-gateway-destination-endpoint``
and the model server; the picker runs the conformance config, so the test knows where it
decided (header-based-testing-filter) and checks where the request went (Envoy's
``x-upstream-host``) and what the picker recorded (``/debug/decisions``).

Defect 8: the shipped Envoy config (config/envoy.yaml) removes the control headers before
any filter, so the picker never sees a client's rewrite, objective or fairness id. An
ext_proc server that answers every request with the headers it received shows what a
picker behind that Envoy would see.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from e2e_support import MODEL, SIM_ARGS, Reply, completion, post, start_envoy  # type: ignore[import-not-found]
from envoy.config.core.v3 import base_pb2 as core
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp.devstack.envoy import (
    CONTROL_REQUEST_HEADERS,
    TEST_REQUEST_HEADERS,
)
from epp.devstack.stack import Stack
from epp.server import messages

CONFORMANCE_CONFIG = (Path(__file__).resolve().parents[2] / "config" / "conformance.yaml").read_text()
SELECT = "test-epp-endpoint-selection"


def send(url: str, headers: dict[str, str], count: int = 1) -> list[Reply]:
    async def run() -> list[Reply]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            return [await post(session, url, completion(f"steer {i}"), headers=headers) for i in range(count)]

    return asyncio.run(run())


@pytest.fixture(scope="module")
def unstripped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Envoy passes every client header to the picker: the picker alone must hold the line."""
    with Stack(tmp_path_factory.mktemp("control"), replicas=3, sim_args=SIM_ARGS, config_text=CONFORMANCE_CONFIG,
               envoy_options={"strip_headers": []}) as stack:
        yield stack


def last_decision(stack: Stack) -> dict[str, Any]:
    """The picker's most recent routing decision (requests here are sent one at a time)."""
    with urllib.request.urlopen(f"{stack.admin_url}/debug/decisions?limit=1", timeout=5) as response:
        decision: dict[str, Any] = json.load(response)["decisions"][0]
    return decision


def decided_hostports(stack: Stack) -> list[str]:
    by_name = {f"sim-{i}": stack.sim_hostport(i) for i in range(stack.replicas)}  # Stack.write_pool's names
    return [by_name[name] for name in last_decision(stack)["destination"]]


def test_client_sent_destination_header_does_not_override_the_pickers_choice(unstripped: Stack) -> None:
    decided, other, third = (unstripped.sim_hostport(i) for i in range(3))
    forged = {
        SELECT: decided,
        "x-gateway-destination-endpoint": other,
        "x-gateway-destination-endpoint-subset": third,
        "x-gateway-destination-endpoint-served": other,
    }
    for _ in range(6):
        reply = send(unstripped.url, forged)[0]
        assert (reply.status, reply.upstream) == (200, decided)
        assert decided_hostports(unstripped) == [decided]


def test_client_sent_destination_list_does_not_override_the_pickers_choice(unstripped: Stack) -> None:
    decided = unstripped.sim_hostport(2)
    forged = {SELECT: decided,
              "x-gateway-destination-endpoint": f"{unstripped.sim_hostport(0)},{unstripped.sim_hostport(1)}"}
    assert [(r.status, r.upstream) for r in send(unstripped.url, forged, count=4)] == [(200, decided)] * 4


def test_client_sent_control_headers_with_the_default_picker_config_follow_the_decision_log(tmp_path: Path) -> None:
    with Stack(tmp_path, replicas=3, sim_args=SIM_ARGS, envoy_options={"strip_headers": []}) as stack:
        for i in range(9):
            target = stack.sim_hostport(i % 3)
            reply = send(stack.url, {"x-gateway-destination-endpoint": target,
                                     "x-gateway-destination-endpoint-served": target})[0]
            assert reply.status == 200
            assert [reply.upstream] == decided_hostports(stack)


@pytest.mark.parametrize("build", [
    pytest.param(lambda: messages.request_headers_response(["10.0.0.1:8000"], [], []).request_headers.response,
                 id="full-duplex"),
    pytest.param(lambda: messages.buffered_request_body_response(["10.0.0.1:8000"], [], [], None)
                 .request_body.response, id="buffered"),
])
def test_destination_header_mutation_overwrites_under_both_envoy_append_semantics(build: Any) -> None:
    """Envoy 1.40's ext_proc reads only the legacy ``append`` flag (measured: an
    ``append_action`` of APPEND_IF_EXISTS_OR_ADD still overwrites, ``append: true`` routes to
    the client's own header); Envoys that honour ``append_action`` default it to append.
    The picker must therefore say overwrite in both fields, or the e2e tests above would
    pass today and the client would steer after an Envoy upgrade."""
    options = [o for o in build().header_mutation.set_headers if o.header.key == messages.DESTINATION_HEADER]
    assert len(options) == 1
    assert not (options[0].HasField("append") and options[0].append.value)
    assert options[0].append_action == core.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def test_model_rewrite_sent_by_a_client_is_stripped_by_the_shipped_envoy_config(unstripped: Stack,
                                                                                tmp_path: Path) -> None:
    rewrite = {SELECT: unstripped.sim_hostport(0), "x-gateway-model-name-rewrite": "attacker-chosen-model"}
    # Without stripping, the picker takes the client's rewrite (this is what the config prevents).
    send(unstripped.url, rewrite)
    assert last_decision(unstripped)["model"] == "attacker-chosen-model"
    # The shipped list minus the test header, so header-based-testing-filter still routes.
    envoy, url = start_envoy(tmp_path, unstripped.ports.grpc, "stripping", strip_headers=CONTROL_REQUEST_HEADERS)
    shipped, shipped_url = start_envoy(tmp_path, unstripped.ports.grpc, "shipped")
    try:
        assert send(url, rewrite)[0].status == 200
        assert last_decision(unstripped)["model"] == MODEL
        # config/envoy.yaml as shipped strips test-epp-endpoint-selection too: nothing is selected.
        assert send(shipped_url, rewrite)[0].status == 429
    finally:
        envoy.stop()
        shipped.stop()


class HeaderEcho(pb_grpc.ExternalProcessorServicer):
    """An ext_proc server that answers each request with the request headers it was given."""

    def Process(self, request_iterator, context):  # type: ignore[no-untyped-def]  # noqa: N802 - gRPC stub signature
        for request in request_iterator:
            if request.WhichOneof("request") == "request_headers":
                headers = request.request_headers.headers.headers
                seen = {h.key: (h.raw_value or h.value.encode()).decode() for h in headers}
                response = pb.ProcessingResponse()
                response.immediate_response.status.code = 200  # type: ignore[assignment]  # enum field set by number
                response.immediate_response.body = json.dumps(seen).encode()
                yield response
                return


@pytest.fixture(scope="module")
def header_echo() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ExternalProcessorServicer_to_server(HeaderEcho(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        done = server.stop(grace=None)
        assert isinstance(done, threading.Event)
        done.wait(5)


FORGED = {
    "x-gateway-destination-endpoint": "10.0.0.66:8000",
    "x-gateway-destination-endpoint-subset": "10.0.0.66:8000",
    "x-gateway-destination-endpoint-served": "10.0.0.66:8000",
    "x-gateway-model-name-rewrite": "attacker-chosen-model",
    "x-gateway-inference-objective": "premium",
    "x-gateway-inference-fairness-id": "someone-else",
    "test-epp-endpoint-selection": "10.0.0.66",
}


def headers_the_picker_sees(url: str) -> dict[str, str]:
    reply = send(url, {**FORGED, "x-harmless": "kept"})[0]
    assert reply.status == 200
    seen: dict[str, str] = json.loads(reply.body)
    return seen


def test_shipped_envoy_config_strips_every_client_sent_control_header(header_echo: int, tmp_path: Path) -> None:
    assert set(FORGED) == set(CONTROL_REQUEST_HEADERS + TEST_REQUEST_HEADERS)
    envoy, url = start_envoy(tmp_path, header_echo, "shipped")
    unstripped_envoy, unstripped_url = start_envoy(tmp_path, header_echo, "unstripped", strip_headers=[])
    try:
        seen = headers_the_picker_sees(url)
        assert seen["x-harmless"] == "kept"
        assert set(FORGED) & set(seen) == set()
        # The same request through an Envoy without the stripping: all of them arrive.
        assert set(FORGED) <= set(headers_the_picker_sees(unstripped_url))
    finally:
        envoy.stop()
        unstripped_envoy.stop()
