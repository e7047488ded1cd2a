"""ext_proc over TLS (--secure-serving, --cert-path, --enable-cert-reload), as the Go EPP serves it."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.errors import ConfigError
from epp.server.app import PickerServer, ServeOptions
from epp.server.tls import CERT_FILE, KEY_FILE, self_signed_key_pair
from epp.testing import ExtProcClient

PickerFactory = Callable[..., Awaitable[PickerServer]]
BODY = b'{"model":"m","prompt":"hello over tls"}'


async def served_certificate(port: int) -> x509.Certificate:
    """The certificate a new TLS connection to the port is given (in a thread: the server shares this loop)."""
    pem = await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", port), timeout=5)
    return x509.load_pem_x509_certificate(pem.encode())


def tls_client(port: int, root_pem: bytes, server_name: str = "localhost") -> ExtProcClient:
    """The scripted Envoy client on a verifying TLS channel instead of its plaintext one."""
    client = ExtProcClient.__new__(ExtProcClient)
    client.channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(root_pem),
                                             options=[("grpc.ssl_target_name_override", server_name)])
    client.stub = pb_grpc.ExternalProcessorStub(client.channel)
    return client


def write_pair(directory: Path, bind: str = "127.0.0.1") -> bytes:
    """A fresh pair written as a rotation would (each file replaced atomically); returns the certificate."""
    pair = self_signed_key_pair(bind)
    for name, data in ((KEY_FILE, pair.key_pem), (CERT_FILE, pair.cert_pem)):
        tmp = directory / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, directory / name)
    return pair.cert_pem


def fingerprint(cert: x509.Certificate | bytes) -> bytes:
    if isinstance(cert, bytes):
        cert = x509.load_pem_x509_certificate(cert)
    return cert.fingerprint(hashes.SHA256())


async def test_secure_serving_without_cert_path_serves_a_self_signed_certificate(start_picker: PickerFactory) -> None:
    server = await start_picker(secure_serving=True)
    cert = await served_certificate(server.grpc_port)
    assert cert.issuer == cert.subject
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    root = cert.public_bytes(serialization.Encoding.PEM)
    async with tls_client(server.grpc_port, root, "127.0.0.1") as client:
        result = await client.exchange(BODY)
    assert result.destination in {"10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"}


async def test_secure_serving_refuses_plaintext_on_the_ext_proc_port(start_picker: PickerFactory) -> None:
    server = await start_picker(secure_serving=True)
    request = health_pb2.HealthCheckRequest(service="envoy.service.ext_proc.v3.ExternalProcessor")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(channel).Check(request, timeout=3)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as client:
        result = await client.exchange(BODY, timeout=3)
    assert result.responses == [] and result.destination is None
    # Envoy's gRPC health check of the ext_proc cluster goes over the cluster's TLS.
    root = (await served_certificate(server.grpc_port)).public_bytes(serialization.Encoding.PEM)
    credentials = grpc.ssl_channel_credentials(root)
    async with grpc.aio.secure_channel(f"127.0.0.1:{server.grpc_port}", credentials,
                                       options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=3)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_port_stays_plaintext_with_secure_serving(start_picker: PickerFactory) -> None:
    server = await start_picker(secure_serving=True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_health_port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="envoy.service.ext_proc.v3.ExternalProcessor"), timeout=3)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_cert_path_serves_the_given_certificate(start_picker: PickerFactory, tmp_path: Path) -> None:
    cert_pem = write_pair(tmp_path)
    server = await start_picker(secure_serving=True, cert_path=tmp_path)
    assert fingerprint(await served_certificate(server.grpc_port)) == fingerprint(cert_pem)
    async with tls_client(server.grpc_port, cert_pem) as client:
        result = await client.exchange(BODY)
    assert result.destination is not None


async def test_rotated_certificate_is_served_to_new_connections(start_picker: PickerFactory, tmp_path: Path) -> None:
    first = write_pair(tmp_path)
    server = await start_picker(secure_serving=True, cert_path=tmp_path, enable_cert_reload=True)
    assert fingerprint(await served_certificate(server.grpc_port)) == fingerprint(first)
    async with tls_client(server.grpc_port, first) as old_client:
        assert (await old_client.exchange(BODY)).destination is not None
        second = write_pair(tmp_path)
        assert fingerprint(await served_certificate(server.grpc_port)) == fingerprint(second)
        async with tls_client(server.grpc_port, second) as new_client:
            assert (await new_client.exchange(BODY)).destination is not None
        # The connection made before the rotation keeps working.
        assert (await old_client.exchange(BODY)).destination is not None


async def test_half_written_rotation_keeps_serving_the_previous_certificate(start_picker: PickerFactory,
                                                                            tmp_path: Path) -> None:
    first = write_pair(tmp_path)
    server = await start_picker(secure_serving=True, cert_path=tmp_path, enable_cert_reload=True)
    other = self_signed_key_pair("127.0.0.1")
    (tmp_path / KEY_FILE).write_bytes(other.key_pem)  # the key arrives first; tls.crt is still the old one
    assert fingerprint(await served_certificate(server.grpc_port)) == fingerprint(first)
    (tmp_path / CERT_FILE).write_bytes(other.cert_pem)
    assert fingerprint(await served_certificate(server.grpc_port)) == fingerprint(other.cert_pem)


async def test_without_cert_reload_a_rotated_certificate_is_not_picked_up(start_picker: PickerFactory,
                                                                          tmp_path: Path) -> None:
    first = write_pair(tmp_path)
    server = await start_picker(secure_serving=True, cert_path=tmp_path)
    write_pair(tmp_path)
    assert fingerprint(await served_certificate(server.grpc_port)) == fingerprint(first)


@pytest.mark.parametrize("broken", ["missing key", "garbage cert", "mismatched key"])
def test_bad_cert_path_is_a_config_error(tmp_path: Path, broken: str) -> None:
    write_pair(tmp_path)
    if broken == "missing key":
        (tmp_path / KEY_FILE).unlink()
    elif broken == "garbage cert":
        (tmp_path / CERT_FILE).write_text("not a certificate")
    else:
        (tmp_path / KEY_FILE).write_bytes(self_signed_key_pair("127.0.0.1").key_pem)
    server = PickerServer(ServeOptions(endpoints="10.0.0.1:8000", secure_serving=True, cert_path=tmp_path))
    with pytest.raises(ConfigError) as caught:
        server.build()
    assert caught.value.field == "--cert-path"
