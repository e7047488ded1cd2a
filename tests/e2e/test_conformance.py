"""The GIE conformance scenarios that need no Kubernetes API server, through real Envoy.

Each test is named after the suite's scenario (conformance/tests/*.go in
kubernetes-sigs/gateway-api-inference-extension). The picker runs the suite's own config
(config/conformance.yaml): header-based-testing-filter picks the endpoints named in
``test-epp-endpoint-selection`` and destination-endpoint-served-verifier echoes the served
endpoint. "Pods" are loopback IPs (127.0.0.11, .12, .13), each with two simulators on two
ports standing for data-parallel ranks, as the suite's DP backends expose 3000/3002/3004.
Envoy strips the protocol's control headers and reports the served endpoint as a response
header (epp/devstack/envoy.py).
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from e2e_support import SIM_ARGS, Reply, completion, post, start_envoy, wait_until  # type: ignore[import-not-found]

from epp.devstack.envoy import CONTROL_REQUEST_HEADERS
from epp.devstack.processes import free_port
from epp.devstack.stack import Stack

CONFORMANCE_CONFIG = (Path(__file__).resolve().parents[2] / "config" / "conformance.yaml").read_text()
PODS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
RANKS = 2
SELECT = "test-epp-endpoint-selection"
SERVED = "x-conformance-test-served-endpoint"
REQUESTS_PER_CASE = 12
MAX_BODY = 64 * 1024
CONFORMANCE_ENVOY = {"strip_headers": CONTROL_REQUEST_HEADERS, "report_served_endpoint": True}


def send(url: str, count: int, headers: dict[str, str] | None = None, body: bytes | None = None,
         concurrent: bool = True) -> list[Reply]:
    """``count`` completions (bounded: at most 10 at once, 60 s in all), as the suite's load loops."""

    async def run() -> list[Reply]:
        limit = asyncio.Semaphore(10)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            async def one(i: int) -> Reply:
                async with limit:
                    return await post(session, url, body if body is not None else completion(f"critic {i}"),
                                      headers=headers)
            if concurrent:
                return list(await asyncio.gather(*(one(i) for i in range(count))))
            return [await one(i) for i in range(count)]

    return asyncio.run(run())


def ip_of(hostport: str) -> str:
    return hostport.rpartition(":")[0]


@pytest.fixture(scope="module")
def conformance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    hosts = [ip for ip in PODS for _ in range(RANKS)]
    with Stack(tmp_path_factory.mktemp("conformance"), replicas=len(hosts), sim_hosts=hosts, sim_args=SIM_ARGS,
               config_text=CONFORMANCE_CONFIG, envoy_options=CONFORMANCE_ENVOY,
               picker_args=["--max-request-body-bytes", str(MAX_BODY)]) as stack:
        yield stack


def endpoints_of(stack: Stack, ip: str) -> set[str]:
    return {stack.sim_hostport(i) for i in range(stack.replicas) if stack.sim_hosts[i] == ip}


def test_gateway_following_epp_routing(conformance: Stack) -> None:
    for pod in PODS:
        replies = send(conformance.url, REQUESTS_PER_CASE, {SELECT: pod})
        assert [r.status for r in replies] == [200] * REQUESTS_PER_CASE
        assert {ip_of(r.upstream) for r in replies} == {pod}
    for chosen in ([PODS[2]], [PODS[0], PODS[1]], list(PODS)):
        replies = send(conformance.url, REQUESTS_PER_CASE * 2, {SELECT: ",".join(chosen)})
        assert [r.status for r in replies] == [200] * (REQUESTS_PER_CASE * 2)
        assert {ip_of(r.upstream) for r in replies} <= set(chosen)


def test_gateway_following_epp_routing_with_data_parallelism(conformance: Stack) -> None:
    rank = [sorted(endpoints_of(conformance, pod)) for pod in PODS]  # rank[pod][i] = "ip:port"
    # Pinned to one rank: every request lands on exactly that ip:port, repeatedly.
    for pod_ranks in rank:
        for hostport in pod_ranks:
            replies = send(conformance.url, 4, {SELECT: hostport})
            assert [(r.status, r.upstream) for r in replies] == [(200, hostport)] * 4
    cases = [
        ([PODS[1]], endpoints_of(conformance, PODS[1])),  # one pod, any rank
        ([PODS[0], rank[2][1]], endpoints_of(conformance, PODS[0]) | {rank[2][1]}),  # one pod with a fixed rank
        ([PODS[0], rank[1][0], PODS[2]], endpoints_of(conformance, PODS[0]) | {rank[1][0]}
         | endpoints_of(conformance, PODS[2])),
    ]
    for header, allowed in cases:
        replies = send(conformance.url, REQUESTS_PER_CASE * 2, {SELECT: ",".join(header)})
        assert [r.status for r in replies] == [200] * (REQUESTS_PER_CASE * 2)
        assert {r.upstream for r in replies} <= allowed, header


def test_gateway_destination_endpoint_served(conformance: Stack) -> None:
    for i in range(conformance.replicas):
        hostport = conformance.sim_hostport(i)
        reply = send(conformance.url, 1, {SELECT: hostport})[0]
        assert reply.status == 200
        assert reply.headers[SERVED] == hostport == reply.upstream
    for pod in PODS:  # IP only, as the suite sends it: the echo names the rank that served
        for reply in send(conformance.url, 4, {SELECT: pod}):
            assert reply.headers[SERVED] == reply.upstream
            assert ip_of(reply.headers[SERVED]) == pod


# --- the status-code contract (reference section 2) ----------------------------------------


def test_status_contract_malformed_json_is_400(conformance: Stack) -> None:
    reply = send(conformance.url, 1, {SELECT: PODS[0]}, body=b'{"model": "m", "prompt": ')[0]
    assert reply.status == 400


def test_status_contract_missing_model_is_400(conformance: Stack) -> None:
    reply = send(conformance.url, 1, {SELECT: PODS[0]}, body=b'{"prompt": "no model here"}')[0]
    assert reply.status == 400


def test_status_contract_body_over_the_limit_is_413(conformance: Stack) -> None:
    reply = send(conformance.url, 1, {SELECT: PODS[0]}, body=completion("x" * (MAX_BODY + 1)))[0]
    assert reply.status == 413
    assert send(conformance.url, 1, {SELECT: PODS[0]}, body=completion("x" * (MAX_BODY // 2)))[0].status == 200


def test_status_contract_filters_leaving_nothing_is_429(conformance: Stack) -> None:
    assert send(conformance.url, 1)[0].status == 429  # no selection header: the filter keeps nothing
    assert send(conformance.url, 1, {SELECT: "10.99.99.99"})[0].status == 429


def test_status_contract_subset_hint_with_no_match_is_503(conformance: Stack, tmp_path: Path) -> None:
    hint = {"name": "envoy.filters.http.set_metadata", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config",
        "metadata": [{"metadata_namespace": "envoy.lb.subset_hint",
                      "value": {"x-gateway-destination-endpoint-subset": ["10.99.99.99:8000"]}}]}}
    envoy, url = start_envoy(tmp_path, conformance.ports.grpc, "subset", extra_http_filters=[hint])
    try:
        reply = send(url, 1, {SELECT: PODS[0]})[0]
        assert reply.status == 503
        assert b"failed to find endpoint candidates" in reply.body
    finally:
        envoy.stop()


# --- the picker unavailable --------------------------------------------------------------


def small_stack(workdir: Path, **envoy_options: object) -> Stack:
    return Stack(workdir, replicas=2, sim_hosts=PODS[:2], sim_args=SIM_ARGS, config_text=CONFORMANCE_CONFIG,
                 envoy_options={**CONFORMANCE_ENVOY, **envoy_options})


def picker_marked_down(stack: Stack) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports.envoy_admin}/clusters", timeout=5) as page:
        lines = page.read().decode().splitlines()
    return any(line.startswith("ext_proc::") and "health_flags::/failed_active_hc" in line for line in lines)


def test_epp_unavailable_fail_open(tmp_path: Path) -> None:
    stack = small_stack(tmp_path)
    pool = [stack.sim_hostport(i) for i in range(stack.replicas)]
    # Fail open, falling back to the pool as a gateway falls back to the InferencePool's Service.
    stack.envoy_options.update(failure_mode_allow=True, fallback_endpoints=pool)
    outsider = f"127.0.0.1:{free_port()}"  # not in the pool: a client must not reach it
    with stack:
        # Phase 1: the picker is up and is followed.
        replies = send(stack.url, 6, {SELECT: pool[1]})
        assert [(r.status, r.upstream) for r in replies] == [(200, pool[1])] * 6
        # Phase 2: the picker is gone; requests are still served, by the pool, and a
        # client-sent destination is not followed (Envoy strips it before routing).
        assert stack.picker is not None
        stack.picker.stop()
        # Envoy 1.40 fails open in FULL_DUPLEX_STREAMED mode only when the ext_proc stream
        # fails before the body is sent to it: once its health check marked the picker down
        # (until then, about 2 s, a POST gets 500; see epp/devstack/envoy.py).
        wait_until(lambda: picker_marked_down(stack), timeout=30)
        replies = send(stack.url, 8, {SELECT: pool[1], "x-gateway-destination-endpoint": outsider}, concurrent=False)
        assert [r.status for r in replies] == [200] * 8
        assert {r.upstream for r in replies} <= set(pool)


def test_epp_unavailable_fail_close(tmp_path: Path) -> None:
    with small_stack(tmp_path) as stack:  # the shipped config: failure_mode_allow false
        assert send(stack.url, 1, {SELECT: stack.sim_hostport(0)})[0].status == 200
        assert stack.picker is not None
        stack.picker.stop()
        replies = send(stack.url, 4, {SELECT: stack.sim_hostport(0)}, concurrent=False)
        assert [r.status for r in replies] == [500] * 4
        assert not any(r.upstream for r in replies)
