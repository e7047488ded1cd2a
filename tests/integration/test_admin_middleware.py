"""The admin server's middleware chain, observed from a client: version and request-id headers,
one error shape, panic recovery, the rate limit (on an injected clock), auth, and no secrets."""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import epp
from epp.datalayer.pool import EndpointPool
from epp.datalayer.poolsource import parse_endpoint_list
from epp.metrics import PickerMetrics
from epp.scheduling.trace import DecisionLog
from epp.server.admin import REDACTED, build_admin_app, redact
from epp.server.app import PickerServer
from epp.server.auth import TokenFile
from epp.server.middleware import API_VERSION, AdminSettings

PickerFactory = Callable[..., Awaitable[PickerServer]]

EPOCH = 1_800_000_000.0
ERROR_KEYS = {"code", "message", "details", "requestId", "timestamp", "retryable"}
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TOKEN = "s3cret-admin-token-7f1c"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now


@dataclasses.dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    text: str

    def json(self) -> Any:
        import json
        return json.loads(self.text)


class Admin:
    def __init__(self, url: str, clock: Clock, metrics: PickerMetrics) -> None:
        self.url = url
        self.clock = clock
        self.metrics = metrics

    async def request(self, path: str, method: str = "GET", headers: Mapping[str, str] | None = None,
                      token: str | None = None) -> Reply:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session, \
                session.request(method, self.url + path, headers=sent) as response:
            return Reply(response.status, response.headers.copy(), await response.text())

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value if value is not None else 0.0


def boom() -> dict[str, Any]:
    raise RuntimeError(f"handler failed near {TOKEN}")  # the text must not reach the client


AdminFactory = Callable[..., Awaitable[Admin]]


@pytest.fixture
async def start_admin() -> AsyncIterator[AdminFactory]:
    servers: list[TestServer] = []

    async def start(token: TokenFile | None = None, pages: Mapping[str, Callable[[], dict[str, Any]]] | None = None,
                    **settings: Any) -> Admin:
        clock = Clock()
        pool = EndpointPool("default")
        pool.replace_all(parse_endpoint_list("10.0.0.1:8000"))
        metrics = PickerMetrics(pool)
        app = build_admin_app(metrics, pool, DecisionLog(16), None, lambda: True, token, lambda: {"endpoints": 1},
                              {"boom": boom, **(pages or {})},
                              settings=AdminSettings(clock=clock, wall_clock=clock.wall, **settings))
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return Admin(str(server.make_url("")).rstrip("/"), clock, metrics)

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin-token-file-path-marker"
    path.write_text(TOKEN + "\n")
    return path


def assert_error(reply: Reply, status: int, code: str, retryable: bool) -> dict[str, Any]:
    assert reply.status == status
    assert reply.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = reply.json()
    assert set(body) == ERROR_KEYS
    assert (body["code"], body["retryable"]) == (code, retryable)
    assert body["requestId"] == reply.headers["X-Request-Id"]
    assert isinstance(body["message"], str) and body["message"]
    return body


# --- version and request id -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/debug/endpoints", "/debug/state",
                                  "/debug/config", "/no/such/path"])
async def test_every_response_carries_the_api_version_and_a_fresh_request_id(start_admin: AdminFactory,
                                                                              path: str) -> None:
    admin = await start_admin()
    first, second = await admin.request(path), await admin.request(path)
    for reply in (first, second):
        assert reply.headers["X-API-Version"] == API_VERSION == "v1"
        assert UUID4.match(reply.headers["X-Request-Id"])
    assert first.headers["X-Request-Id"] != second.headers["X-Request-Id"]


async def test_a_uuid_request_id_is_kept_and_echoed(start_admin: AdminFactory) -> None:
    admin = await start_admin()
    offered = str(uuid.uuid4())
    assert (await admin.request("/debug/state", headers={"X-Request-Id": offered})).headers["X-Request-Id"] == offered
    upper = str(uuid.uuid1()).upper()  # any UUID version; echoed in canonical lower case
    assert (await admin.request("/healthz", headers={"X-Request-Id": upper})).headers["X-Request-Id"] == upper.lower()
    reply = await admin.request("/nowhere", headers={"X-Request-Id": offered})
    assert assert_error(reply, 404, "NotFound", False)["requestId"] == offered


@pytest.mark.parametrize("offered", ["abc", "", "req-1", "urn:uuid:" + "12345678-1234-5678-1234-567812345678",
                                     "12345678123456781234567812345678", "{12345678-1234-5678-1234-567812345678}",
                                     "12345678-1234-5678-1234-5678123456789", "x" * 5000])
async def test_a_request_id_that_is_not_a_uuid_is_replaced(start_admin: AdminFactory, offered: str) -> None:
    admin = await start_admin()
    reply = await admin.request("/debug/state", headers={"X-Request-Id": offered})
    assert reply.status == 200
    assert reply.headers["X-Request-Id"] != offered and UUID4.match(reply.headers["X-Request-Id"])


# --- one error shape --------------------------------------------------------------------------


async def test_router_and_handler_errors_share_the_error_shape(start_admin: AdminFactory) -> None:
    admin = await start_admin()
    body = assert_error(await admin.request("/debug/nothing-here"), 404, "NotFound", False)
    assert body["timestamp"] == "2027-01-15T08:00:00.000Z"  # EPOCH on the injected wall clock

    reply = await admin.request("/metrics", method="POST")
    body = assert_error(reply, 405, "MethodNotAllowed", False)
    assert "GET" in reply.headers["Allow"]
    assert body["details"]["method"] == "POST" and "GET" in body["details"]["allowed"]

    body = assert_error(await admin.request("/debug/decisions?limit=many"), 400, "InvalidRequest", False)
    assert body["details"] == {"parameter": "limit", "value": "many"}

    body = assert_error(await admin.request("/debug/decisions/unknown-id"), 404, "NotFound", False)
    assert body["details"] == {"requestId": "unknown-id"}


# --- panic recovery ---------------------------------------------------------------------------


async def test_a_failing_handler_answers_a_json_500_that_is_counted_and_logged_with_its_request_id(
        start_admin: AdminFactory, caplog: pytest.LogCaptureFixture) -> None:
    admin = await start_admin()
    offered = str(uuid.uuid4())
    with caplog.at_level(logging.DEBUG, logger="epp.admin"):
        reply = await admin.request("/debug/boom", headers={"X-Request-Id": offered})
    body = assert_error(reply, 500, "Internal", True)
    assert body["requestId"] == offered and "RuntimeError" not in reply.text and TOKEN not in reply.text
    assert reply.headers["X-API-Version"] == "v1"
    assert admin.sample("epp_admin_requests_total", path="/debug/boom", code="500") == 1
    assert admin.sample("epp_admin_panics_total", path="/debug/boom") == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and offered in errors[0].getMessage() and errors[0].exc_info is not None
    # The connection survived: the server keeps answering.
    assert (await admin.request("/debug/state")).status == 200


async def test_repeated_failures_are_logged_in_full_once_per_interval(start_admin: AdminFactory,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    admin = await start_admin(panic_log_interval=10.0)
    with caplog.at_level(logging.ERROR, logger="epp.admin"):
        for _ in range(5):
            assert (await admin.request("/debug/boom")).status == 500
        admin.clock.now += 10.0
        assert (await admin.request("/debug/boom")).status == 500
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "4 similar failures" in errors[1]
    assert admin.sample("epp_admin_panics_total", path="/debug/boom") == 6


# --- rate limit -------------------------------------------------------------------------------


async def test_rate_limit_headers_and_a_429_that_still_has_request_id_and_version(start_admin: AdminFactory) -> None:
    admin = await start_admin(rate_limit=2.0, rate_burst=3)
    replies = [await admin.request("/debug/state") for _ in range(3)]
    assert [r.status for r in replies] == [200, 200, 200]
    assert [r.headers["X-RateLimit-Remaining"] for r in replies] == ["2", "1", "0"]
    assert {r.headers["X-RateLimit-Limit"] for r in replies} == {"2"}
    # Full again 0.5 s per missing token from now (EPOCH + 0), rounded up to whole seconds.
    assert [r.headers["X-RateLimit-Reset"] for r in replies] == [str(int(EPOCH) + s) for s in (1, 1, 2)]

    refused = await admin.request("/debug/endpoints")
    body = assert_error(refused, 429, "RateLimitExceeded", True)
    assert body["details"] == {"limit": 2.0, "burst": 3}
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["X-API-Version"] == "v1" and UUID4.match(refused.headers["X-Request-Id"])
    assert (refused.headers["X-RateLimit-Remaining"], refused.headers["X-RateLimit-Limit"]) == ("0", "2")
    assert admin.sample("epp_admin_requests_total", path="/debug/endpoints", code="429") == 1
    assert admin.sample("epp_admin_rate_limited_total") == 1

    admin.clock.now += 0.5  # one token back
    assert (await admin.request("/debug/state")).status == 200
    assert (await admin.request("/debug/state")).status == 429


async def test_retry_after_rounds_the_wait_for_a_token_up(start_admin: AdminFactory) -> None:
    admin = await start_admin(rate_limit=0.25, rate_burst=1)
    assert (await admin.request("/debug/state")).status == 200
    assert (await admin.request("/debug/state")).headers["Retry-After"] == "4"
    admin.clock.now += 2.5
    assert (await admin.request("/debug/state")).headers["Retry-After"] == "2"


async def test_probes_and_metrics_are_never_rate_limited(start_admin: AdminFactory) -> None:
    admin = await start_admin(rate_limit=1.0, rate_burst=1)
    assert (await admin.request("/debug/state")).status == 200
    assert (await admin.request("/debug/state")).status == 429
    for path in ("/healthz", "/readyz", "/metrics"):
        for _ in range(10):
            reply = await admin.request(path)
            assert reply.status == 200, path
            assert "X-RateLimit-Remaining" not in reply.headers
    assert (await admin.request("/debug/state")).status == 429  # the probes did not refill it either


async def test_the_rate_limit_can_be_turned_off(start_admin: AdminFactory) -> None:
    admin = await start_admin(rate_limit=None, rate_burst=1)
    for _ in range(5):
        reply = await admin.request("/debug/state")
        assert reply.status == 200 and "X-RateLimit-Limit" not in reply.headers


# --- metrics ----------------------------------------------------------------------------------


async def test_request_metrics_label_the_route_template_never_the_raw_path(start_admin: AdminFactory) -> None:
    admin = await start_admin()
    for suffix in ("a", "b", "c"):
        await admin.request(f"/debug/decisions/{suffix}")
        await admin.request(f"/random/{suffix}/{uuid.uuid4()}")
    assert admin.sample("epp_admin_requests_total", path="/debug/decisions/{request_id}", code="404") == 3
    assert admin.sample("epp_admin_requests_total", path="unmatched", code="404") == 3
    assert admin.sample("epp_admin_request_duration_seconds_count", path="unmatched") == 3
    text = (await admin.request("/metrics")).text
    paths = set(re.findall(r'epp_admin_requests_total\{code="\d+",path="([^"]*)"\}', text))
    assert paths == {"/debug/decisions/{request_id}", "unmatched"}


# --- auth in the chain ------------------------------------------------------------------------


async def test_auth_is_enforced_inside_the_chain_and_spends_no_rate_tokens(start_admin: AdminFactory,
                                                                           token_file: Path) -> None:
    admin = await start_admin(token=TokenFile(token_file), rate_limit=1.0, rate_burst=1)
    for _ in range(5):
        reply = await admin.request("/debug/state", token="wrong")
        assert_error(reply, 401, "Unauthorized", False)
        assert reply.headers["WWW-Authenticate"].startswith("Bearer") and reply.headers["X-API-Version"] == "v1"
    assert admin.sample("epp_admin_requests_total", path="/debug/state", code="401") == 5
    ok = await admin.request("/debug/state", token=TOKEN)
    assert ok.status == 200 and ok.headers["X-RateLimit-Remaining"] == "0"
    assert (await admin.request("/healthz")).status == 200
    assert (await admin.request("/metrics")).status == 401


async def test_no_response_contains_the_token_or_its_file(start_admin: AdminFactory, token_file: Path) -> None:
    admin = await start_admin(token=TokenFile(token_file), rate_limit=100.0, rate_burst=200)
    paths = ["/healthz", "/readyz", "/metrics", "/debug/endpoints", "/debug/decisions", "/debug/decisions/x",
             "/debug/state", "/debug/config", "/debug/boom", "/debug/decisions?limit=x", "/elsewhere"]
    seen = 0
    for path in paths:
        for token in (None, "wrong", TOKEN):
            reply = await admin.request(path, token=token)
            everything = reply.text + "".join(f"{k}: {v}" for k, v in reply.headers.items())
            assert TOKEN not in everything and "path-marker" not in everything, (path, token)
            seen += 1
    assert seen == len(paths) * 3


# --- /debug/config ----------------------------------------------------------------------------


async def test_debug_config_shows_the_effective_config_versions_and_options(start_picker: PickerFactory,
                                                                            token_file: Path) -> None:
    server = await start_picker(admin_token_file=token_file)
    assert server.config is not None
    text = server.options.config_text
    app = build_admin_app(server.metrics, server.pool, server.decisions, None, lambda: True,
                          config=server.config, config_text=text, options=dataclasses.asdict(server.options))
    test_server = TestServer(app, host="127.0.0.1", port=0)
    await test_server.start_server()
    try:
        async with aiohttp.ClientSession() as session, session.get(test_server.make_url("/debug/config")) as response:
            assert response.status == 200
            raw = await response.text()
            view = await response.json()
    finally:
        await test_server.close()
    assert set(view) == {"versions", "config", "options"}
    assert view["versions"]["epp"] == epp.__version__ and view["versions"]["adminApi"] == "v1"
    assert "aiohttp" in view["versions"]["packages"]
    config = view["config"]
    assert config["source"] == "text"
    assert [p["pluginRef"] for p in config["document"]["schedulingProfiles"][0]["plugins"]] == [
        "queue-scorer", "prefix-cache-scorer"]
    plugins = {p["name"]: p for p in config["plugins"]}
    assert plugins["queue-scorer"]["type"] == "queue-scorer"
    # Plugins the loader created are listed too, with defaults filled in under their YAML key names.
    producer = next(p for p in config["plugins"] if p["type"] == "approx-prefix-cache-producer")
    assert producer["parameters"]["blockSizeTokens"] == 16 and producer["parameters"]["autoTune"] is True
    assert config["profiles"][0]["name"] == "default"
    assert {s["plugin"] for s in config["profiles"][0]["scorers"]} == {"queue-scorer", "prefix-cache-scorer"}
    assert config["featureGates"] == [] and config["flowControl"] is False
    assert view["options"]["admin_token_file"] == REDACTED and "config_text" not in view["options"]
    assert view["options"]["grpc_port"] == 0
    assert TOKEN not in raw and str(token_file) not in raw


async def test_debug_config_without_a_config_still_reports_versions(start_admin: AdminFactory) -> None:
    view = (await start_admin()).request
    reply = await view("/debug/config")
    assert reply.status == 200
    body = reply.json()
    assert body["config"] is None and body["options"] is None and body["versions"]["epp"] == epp.__version__


def test_redact_hides_credential_values_but_not_counts_of_tokens() -> None:
    value = {"token": "t", "apiKey": "k", "api_key": "k", "password": "p", "clientSecret": "s", "authToken": "a",
             "admin_token_file": "/x", "cert_path": "/c", "nested": [{"bearer": "b", "maxPrefixTokens": 256}],
             "blockSizeTokens": 16, "key": "model", "tokens": 3, "emptyToken": None}
    assert redact(value) == {
        "token": REDACTED, "apiKey": REDACTED, "api_key": REDACTED, "password": REDACTED, "clientSecret": REDACTED,
        "authToken": REDACTED, "admin_token_file": REDACTED, "cert_path": REDACTED,
        "nested": [{"bearer": REDACTED, "maxPrefixTokens": 256}], "blockSizeTokens": 16, "key": "model",
        "tokens": 3, "emptyToken": None}


async def test_admin_app_can_be_rebuilt_on_the_same_registry() -> None:
    pool = EndpointPool("default")
    metrics = PickerMetrics(pool)
    for _ in range(2):
        app = build_admin_app(metrics, pool, DecisionLog(4), None, lambda: True)
        assert isinstance(app, web.Application)
