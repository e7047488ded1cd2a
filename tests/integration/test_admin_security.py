"""The admin server: its own bind address, bearer-token auth, strict JSON, supervised background tasks."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.cli import build_parser
from epp.errors import ConfigError
from epp.server.app import PickerServer, ServeOptions
from epp.server.cli import options_from_args
from epp.testing import ExtProcClient
from epp.testing.pages import MetricsPage
from epp.testing.waiting import eventually

PickerFactory = Callable[..., Awaitable[PickerServer]]

SCRAPING_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: kv-cache-utilization-scorer
"""


async def get(url: str, token: str | None = None, authorization: str | None = None) -> tuple[int, dict[str, str], str]:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if authorization is not None:
        headers["Authorization"] = authorization
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session, \
            session.get(url, headers=headers) as response:
        return response.status, dict(response.headers), await response.text()


async def can_connect(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


def admin_addresses(server: PickerServer) -> list[str]:
    assert server._admin is not None
    return [address[0] for address in server._admin.addresses]


def strict_loads(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"invalid JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


# --- defect 6: admin exposed with ext_proc ------------------------------------------------


async def test_admin_server_does_not_follow_the_extproc_bind_address(start_picker: PickerFactory) -> None:
    server = await start_picker(bind="127.0.0.2")
    assert admin_addresses(server) == ["127.0.0.1"]
    assert not await can_connect("127.0.0.2", server.metrics_port)
    status, _, _ = await get(f"http://127.0.0.1:{server.metrics_port}/healthz")
    assert status == 200
    async with ExtProcClient(f"127.0.0.2:{server.grpc_port}") as client:
        result = await client.exchange(b'{"model":"m","prompt":"hi"}')
    assert result.destination is not None


async def test_admin_bind_puts_the_admin_server_on_its_own_address(start_picker: PickerFactory) -> None:
    server = await start_picker(bind="127.0.0.1", admin_bind="127.0.0.3")
    assert admin_addresses(server) == ["127.0.0.3"]
    assert not await can_connect("127.0.0.1", server.metrics_port)
    status, _, text = await get(f"http://127.0.0.3:{server.metrics_port}/readyz")
    assert (status, text) == (200, "ready\n")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin-token"
    path.write_text("s3cret-token\n")  # a trailing newline, as `echo` and Secrets write it
    return path


@pytest.mark.parametrize("path", ["/metrics", "/debug/endpoints", "/debug/decisions", "/debug/decisions/abc"])
async def test_admin_token_guards_metrics_and_debug(start_picker: PickerFactory, token_file: Path,
                                                    path: str) -> None:
    server = await start_picker(admin_token_file=token_file)
    url = f"http://127.0.0.1:{server.metrics_port}{path}"
    for attempt in ({}, {"token": "wrong"}, {"token": "s3cret-token-but-longer"}, {"authorization": "s3cret-token"},
                    {"authorization": "Basic czNjcmV0LXRva2Vu"}):
        status, headers, text = await get(url, **attempt)
        assert status == 401, attempt
        assert headers["WWW-Authenticate"].startswith("Bearer"), attempt
        assert "s3cret" not in text
    status, _, _ = await get(url, token="s3cret-token")
    assert status == (404 if path == "/debug/decisions/abc" else 200)


async def test_probes_stay_open_with_an_admin_token(start_picker: PickerFactory, token_file: Path) -> None:
    server = await start_picker(admin_token_file=token_file)
    for path, body in (("/healthz", "ok\n"), ("/readyz", "ready\n")):
        status, _, text = await get(f"http://127.0.0.1:{server.metrics_port}{path}")
        assert (status, text) == (200, body)


async def test_admin_token_is_reread_when_the_file_changes(start_picker: PickerFactory, token_file: Path) -> None:
    server = await start_picker(admin_token_file=token_file)
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    assert (await get(url, token="s3cret-token"))[0] == 200
    token_file.write_text("rotated")
    st = token_file.stat()
    os.utime(token_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # coarse mtime clocks
    assert (await get(url, token="s3cret-token"))[0] == 401
    assert (await get(url, token="rotated"))[0] == 200


async def test_admin_token_file_emptied_keeps_the_last_token(start_picker: PickerFactory, token_file: Path) -> None:
    server = await start_picker(admin_token_file=token_file)
    url = f"http://127.0.0.1:{server.metrics_port}/debug/endpoints"
    token_file.write_text("")
    assert (await get(url))[0] == 401
    assert (await get(url, token="s3cret-token"))[0] == 200


async def test_no_admin_token_leaves_metrics_open(start_picker: PickerFactory) -> None:
    server = await start_picker()
    assert (await get(f"http://127.0.0.1:{server.metrics_port}/metrics"))[0] == 200


@pytest.mark.parametrize("content", ["", "  \n"])
async def test_empty_admin_token_file_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    server = PickerServer(ServeOptions(endpoints="10.0.0.1:8000", admin_token_file=path))
    with pytest.raises(ConfigError, match="--admin-token-file"):
        server.build()


async def test_missing_admin_token_file_is_a_config_error(tmp_path: Path) -> None:
    server = PickerServer(ServeOptions(endpoints="10.0.0.1:8000", admin_token_file=tmp_path / "absent"))
    with pytest.raises(ConfigError, match="--admin-token-file"):
        server.build()


# --- option plumbing and validation ------------------------------------------------------


@pytest.mark.parametrize(("options", "flag"), [
    ({"max_inflight_body_bytes": 0}, "--max-inflight-body-bytes"),
    ({"max_request_body_bytes": 2**31}, "--max-request-body-bytes"),
    ({"admin_bind": ""}, "--admin-bind"),
    ({"cert_path": Path("/")}, "--cert-path"),
    ({"secure_serving": True, "enable_cert_reload": True}, "--enable-cert-reload"),
    ({"secure_serving": True, "cert_path": Path("/nonexistent-cert-dir")}, "--cert-path"),
])
def test_invalid_security_options_name_the_flag(options: dict[str, Any], flag: str) -> None:
    server = PickerServer(ServeOptions(endpoints="10.0.0.1:8000", **options))
    with pytest.raises(ConfigError) as caught:
        server.build()
    assert caught.value.field == flag


def test_security_flags_reach_the_serve_options(tmp_path: Path) -> None:
    args = build_parser().parse_args([
        "serve", "--endpoints", "10.0.0.1:8000", "--admin-bind", "127.0.0.5", "--admin-token-file", "/t",
        "--secure-serving", "--cert-path", str(tmp_path), "--enable-cert-reload", "--ignore-model-rewrite-header",
        "--max-inflight-body-bytes", "12345678"])
    opts = options_from_args(args)
    assert (opts.admin_bind, opts.admin_token_file, opts.secure_serving, opts.cert_path, opts.enable_cert_reload,
            opts.honor_rewrite_header, opts.max_inflight_body_bytes) == (
        "127.0.0.5", Path("/t"), True, tmp_path, True, False, 12345678)
    defaults = options_from_args(build_parser().parse_args(["serve", "--bind", "0.0.0.0"]))
    assert (defaults.admin_bind, defaults.admin_token_file, defaults.secure_serving, defaults.honor_rewrite_header,
            defaults.max_inflight_body_bytes) == ("127.0.0.1", None, False, True, 1024**3)


async def test_ignore_model_rewrite_header_reaches_the_director(start_picker: PickerFactory) -> None:
    server = await start_picker(honor_rewrite_header=False)
    assert server.director is not None and server.director.honor_rewrite_header is False


# --- defect 14: NaN in /debug/endpoints ----------------------------------------------------




@pytest.fixture
async def nan_server() -> AsyncIterator[MetricsPage]:
    page = ("# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name=\"m\"} NaN\n"
            "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\"} 0\n"
            "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name=\"m\"} 1\n")
    async with MetricsPage(page) as server:
        yield server


async def test_debug_endpoints_is_valid_json_when_a_server_reports_nan(start_picker: PickerFactory,
                                                                      nan_server: MetricsPage) -> None:
    server = await start_picker(endpoints=f"127.0.0.1:{nan_server.port}", config=SCRAPING_CONFIG,
                                refresh_metrics_interval=0.02, scrape_timeout=0.5)
    await eventually(lambda: all(ep.metrics.update_time for ep in server.pool.endpoints()))
    status, headers, text = await get(f"http://127.0.0.1:{server.metrics_port}/debug/endpoints")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    endpoint = strict_loads(text)["endpoints"][0]
    # The extractor refuses the NaN gauge (it keeps the last good value, none yet: 0.0)...
    assert endpoint["metrics"]["kvCacheUsagePercent"] == 0.0
    assert endpoint["metrics"]["runningRequestsSize"] == 1


def test_admin_json_writes_non_finite_numbers_as_null() -> None:
    # ...and whatever non-finite number still reaches a debug view is written as null.
    from epp.server.admin import strict_json

    text = strict_json({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})
    assert strict_loads(text) == {"a": None, "b": [None, 1.5], "c": {"d": None}}


async def test_debug_decisions_is_valid_json_when_a_score_is_nan(start_picker: PickerFactory,
                                                                nan_server: MetricsPage) -> None:
    server = await start_picker(endpoints=f"127.0.0.1:{nan_server.port}", config=SCRAPING_CONFIG,
                                refresh_metrics_interval=0.02, scrape_timeout=0.5)
    await eventually(lambda: all(ep.metrics.update_time for ep in server.pool.endpoints()))
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as client:
        result = await client.exchange(b'{"model":"m","prompt":"hi"}', headers={"x-request-id": "nan-1"})
    assert result.destination == f"127.0.0.1:{nan_server.port}"
    for path in ("/debug/decisions", "/debug/decisions/nan-1"):
        status, _, text = await get(f"http://127.0.0.1:{server.metrics_port}{path}")
        assert status == 200
        strict_loads(text)


# --- defect 15 (part): background tasks under a supervisor ---------------------------------


async def test_crashed_background_task_is_logged_and_restarted(start_picker: PickerFactory,
                                                               caplog: pytest.LogCaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("epp.server.app._RESTART_DELAY", 0.01)
    server = await start_picker()
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("boom in the background")
        await asyncio.Future()

    with caplog.at_level(logging.ERROR, logger="epp"):
        server.tasks.start("flaky", flaky)
        await eventually(lambda: runs == 2)
    assert server.tasks.crashes["flaky"] == 1
    assert "flaky" in server.tasks.running()
    crash = [r for r in caplog.records if "background task flaky crashed" in r.getMessage()]
    assert len(crash) == 1 and crash[0].exc_info is not None
    assert "boom in the background" in str(crash[0].exc_info[1])


async def test_stop_cancels_and_awaits_every_background_task(tmp_path: Path) -> None:
    pool = tmp_path / "pool.yaml"
    pool.write_text("endpoints:\n- {address: 127.0.0.1, port: 9}\n")
    server = PickerServer(ServeOptions(grpc_port=0, grpc_health_port=0, metrics_port=0, pool_file=pool,
                                       config_text=SCRAPING_CONFIG, seed=1))
    await server.start()
    assert sorted(server.tasks.running()) == ["collector", "pool-file watcher"]
    await server.stop(grace=0)
    assert server.tasks.running() == []
    leftover = [t for t in asyncio.all_tasks() if t.get_name() in ("collector", "pool-file watcher")
                or t.get_name().startswith("scrape ")]
    assert leftover == []


# --- defect 4 (part): gRPC no longer receives far more than the body limit -----------------


async def test_buffered_body_far_over_the_limit_is_refused_by_grpc_not_received_whole(
        start_picker: PickerFactory) -> None:
    server = await start_picker(max_request_body_bytes=1024)
    headers = base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v) for k, v in (
        (":method", b"POST"), (":path", b"/v1/completions"), ("content-type", b"application/json"))])
    first = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(headers=headers),
        protocol_config=pb.ProtocolConfiguration(request_body_mode=processing_mode_pb2.ProcessingMode.BUFFERED))
    # 1 MiB of headroom over the limit is admitted (and answered 413 by the picker); 2 MiB is not.
    body = pb.ProcessingRequest(request_body=pb.HttpBody(body=b"x" * (2 * 1024 * 1024 + 1024), end_of_stream=True))
    async with ExtProcClient(f"127.0.0.1:{server.grpc_port}") as client:
        call = client.stub.Process()
        await call.write(first)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.write(body)
            while await call.read() is not grpc.aio.EOF:
                pass
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
