"""Real Envoy calling the picker over TLS (epp serve --secure-serving; Envoy's ext_proc cluster with TLS)."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import SIM_ARGS, completion, post_many  # type: ignore[import-not-found]

from epp.devstack.stack import Stack
from epp.server.tls import CERT_FILE, KEY_FILE, self_signed_key_pair


def envoy_stat(stack: Stack, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports.envoy_admin}/stats?filter=^{name}$",
                                timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    raise AssertionError(f"envoy has no stat {name}: {text!r}")


def route_some(stack: Stack, count: int = 6) -> None:
    replies = asyncio.run(post_many(stack.url, [completion(f"tls request {i}") for i in range(count)]))
    sims = {stack.sim_hostport(i) for i in range(stack.replicas)}
    assert [r.status for r in replies] == [200] * count
    assert {r.upstream for r in replies} <= sims


@pytest.fixture(scope="module")
def self_signed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("tls-stack"), replicas=2, sim_args=SIM_ARGS,
               picker_args=["--refresh-metrics-interval", "20ms", "--secure-serving"],
               envoy_options={"extproc_tls": True}) as running:
        yield running


def test_requests_are_routed_with_tls_between_envoy_and_the_picker(self_signed_stack: Stack) -> None:
    route_some(self_signed_stack)
    assert envoy_stat(self_signed_stack, "cluster.ext_proc.ssl.handshake") >= 1
    assert self_signed_stack.picker is not None
    assert "TLS, self-signed certificate" in self_signed_stack.picker.log_text()


def test_envoy_verifies_the_pickers_certificate_from_cert_path(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    pair = self_signed_key_pair("127.0.0.1")
    (certs / CERT_FILE).write_bytes(pair.cert_pem)
    (certs / KEY_FILE).write_bytes(pair.key_pem)
    with Stack(tmp_path / "stack", replicas=2, sim_args=SIM_ARGS,
               picker_args=["--secure-serving", "--cert-path", str(certs), "--enable-cert-reload"],
               envoy_options={"extproc_tls_ca": certs / CERT_FILE}) as stack:
        route_some(stack, 4)
        assert envoy_stat(stack, "cluster.ext_proc.ssl.handshake") >= 1
        assert envoy_stat(stack, "cluster.ext_proc.ssl.fail_verify_error") == 0
