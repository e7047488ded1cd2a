"""``epp serve --workers N``: worker command lines, ports, restart backoff, the supervisor's restart loop, metrics."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from epp.errors import ConfigError
from epp.server.auth import TokenFile
from epp.server.cli import grpc_health_port, serve_parser
from epp.server.worker_metrics import merge_worker_pages, with_label
from epp.server.worker_plan import RestartBackoff, WorkerSlot, plan_workers, worker_argv
from epp.server.workers import Supervisor, admin_app

USER_ARGS = [
    "--workers", "3", "--bind", "0.0.0.0", "--grpc-port", "7000", "--metrics-port", "7100",
    "--pool-file", "/etc/pool.yaml", "--config-text", "plugins: []\n# -- not a flag", "--refresh-metrics-interval",
    "20ms", "--shutdown-grace-period", "1m30s", "--admin-rate-limit", "2.5", "--no-dispatch-accounting",
    "--secure-serving", "--seed", "7", "--log-level", "warning", "--max-ejection-percent=25",
]
SUPERVISOR_ONLY = {"workers", "grpc_port", "grpc_health_port", "metrics_port", "worker_index", "func"}


def test_a_worker_gets_every_user_flag_and_its_own_ports() -> None:
    parser = serve_parser()
    user = parser.parse_args(USER_ARGS)
    argv = worker_argv(parser, user, WorkerSlot(index=1, grpc_port=7001, metrics_port=41000))
    worker = parser.parse_args(argv)
    for name, value in vars(user).items():
        if name not in SUPERVISOR_ONLY:
            assert getattr(worker, name) == value, name
    assert (worker.grpc_port, worker.grpc_health_port, worker.metrics_port) == (7001, 0, 41000)
    assert worker.workers == 1 and worker.worker_index == 1
    assert worker.refresh_metrics_interval == pytest.approx(0.02)
    assert worker.shutdown_grace_period == pytest.approx(90.0)
    assert worker.pool_file == Path("/etc/pool.yaml")


def test_flags_left_at_their_defaults_are_not_repeated() -> None:
    parser = serve_parser()
    argv = worker_argv(parser, parser.parse_args(["--workers", "2", "--endpoints", "10.0.0.1:8000"]),
                       WorkerSlot(0, 9002, 41000))
    assert argv == ["--endpoints=10.0.0.1:8000", "--grpc-port", "9002", "--grpc-health-port", "0",
                    "--metrics-port", "41000", "--worker-index", "0"]


def test_workers_listen_on_consecutive_ext_proc_ports() -> None:
    slots = plan_workers(3, 9002, 9005, 9090)
    assert [s.grpc_port for s in slots] == [9002, 9003, 9004]
    assert len({s.metrics_port for s in slots}) == 3


def test_the_default_health_port_moves_past_the_workers_ports() -> None:
    parser = serve_parser()
    assert grpc_health_port(parser.parse_args([])) == 9003
    assert grpc_health_port(parser.parse_args(["--workers", "2"])) == 9004
    assert grpc_health_port(parser.parse_args(["--workers", "2", "--grpc-health-port", "9500"])) == 9500


def test_a_port_inside_the_workers_range_is_refused_with_the_flag_named() -> None:
    with pytest.raises(ConfigError, match="--grpc-health-port.*9002-9003"):
        plan_workers(2, 9002, 9003, 9090)
    with pytest.raises(ConfigError, match="--metrics-port"):
        plan_workers(4, 9000, 9100, 9002)
    with pytest.raises(ConfigError, match="--workers"):
        plan_workers(0, 9002, 9003, 9090)
    with pytest.raises(ConfigError, match="--grpc-port"):
        plan_workers(2, 0, 9003, 9090)


def test_restart_delay_doubles_for_crashes_in_a_row_up_to_the_cap() -> None:
    backoff = RestartBackoff(initial=1.0, maximum=8.0, stable_after=60.0)
    delays = [backoff.delay(started_at=t, died_at=t + 0.5) for t in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_a_worker_that_ran_long_enough_restarts_after_the_initial_delay() -> None:
    backoff = RestartBackoff(initial=1.0, maximum=30.0, stable_after=60.0)
    assert [backoff.delay(0.0, 1.0), backoff.delay(2.0, 3.0), backoff.delay(4.0, 64.0)] == [1.0, 2.0, 1.0]


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _exiting(code: int) -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.exit({code})"]


def test_a_crashing_worker_is_restarted_with_growing_delays(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()

    async def scenario() -> Supervisor:
        supervisor = Supervisor([WorkerSlot(0, 9002, 41000)], lambda slot: _exiting(3), clock=clock,
                                sleep=clock.sleep)
        supervisor.start()
        for _ in range(400):  # bounded: each round is one short-lived process at most
            if supervisor.workers[0].restarts >= 4:
                break
            await asyncio.sleep(0.05)
        await supervisor.stop(timeout=5.0)
        return supervisor

    supervisor = asyncio.run(asyncio.wait_for(scenario(), 30))
    worker = supervisor.workers[0]
    assert worker.restarts >= 4
    assert clock.slept[:4] == [1.0, 2.0, 4.0, 8.0]
    assert "worker 0 exited with code 3 (1 restarts so far); restarting in 1s" in caplog.text
    assert supervisor.exit_code == 0


def test_a_configuration_error_before_ready_stops_the_supervisor_instead_of_restarting() -> None:
    async def scenario() -> Supervisor:
        clock = _Clock()
        supervisor = Supervisor([WorkerSlot(0, 9002, 41000), WorkerSlot(1, 9003, 41001)],
                                lambda slot: _exiting(2) if slot.index == 0 else
                                [sys.executable, "-c", "import time; time.sleep(60)"],
                                clock=clock, sleep=clock.sleep)
        supervisor.start()
        await asyncio.wait_for(supervisor.wait_fatal(), 20)
        await supervisor.stop(timeout=5.0)
        return supervisor

    supervisor = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert supervisor.exit_code == 2
    assert supervisor.workers[0].restarts == 0
    assert supervisor.workers[1].last_exit is not None  # the healthy worker was stopped too


WORKER_PAGE = """# HELP requests_total Requests.
# TYPE requests_total counter
requests_total{model="m"} 3.0
# HELP latency_seconds Latency.
# TYPE latency_seconds histogram
latency_seconds_bucket{le="0.1"} 1.0
latency_seconds_bucket{le="+Inf"} 2.0
latency_seconds_count 2.0
latency_seconds_sum 0.3
# HELP running Running.
# TYPE running gauge
running 1.0
"""


def test_merged_page_has_each_family_once_with_every_workers_samples_labelled() -> None:
    merged = merge_worker_pages([("0", WORKER_PAGE), ("1", WORKER_PAGE.replace("3.0", "5.0"))])
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    requests = families["requests"].samples
    assert sorted((s.labels["worker"], s.value) for s in requests) == [("0", 3.0), ("1", 5.0)]
    assert all(s.labels["model"] == "m" for s in requests)
    counts = [s for s in families["latency_seconds"].samples if s.name == "latency_seconds_count"]
    assert sorted(s.labels["worker"] for s in counts) == ["0", "1"]
    assert {s.labels["worker"] for s in families["running"].samples} == {"0", "1"}
    assert merged.count("# TYPE requests_total counter") == 1


def test_label_is_added_to_samples_with_and_without_labels() -> None:
    assert with_label('a{b="c"} 1', "worker", "2") == 'a{worker="2",b="c"} 1'
    assert with_label("a 1", "worker", "2") == 'a{worker="2"} 1'
    assert with_label("a{} 1", "worker", "2") == 'a{worker="2"} 1'
    assert merge_worker_pages([]) == ""


def _without_worker_settings(doc: dict[str, object]) -> dict[str, object]:
    for cluster in doc["static_resources"]["clusters"]:  # type: ignore[index]
        if cluster["name"] == "ext_proc":
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = cluster["load_assignment"]["endpoints"][0][
                "lb_endpoints"][:1]
            cluster.pop("outlier_detection", None)
    listener = doc["static_resources"]["listeners"][0]  # type: ignore[index]
    for http_filter in listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]:
        http_filter.get("typed_config", {}).get("grpc_service", {}).pop("retry_policy", None)
    return doc


def test_the_workers_envoy_config_is_the_standard_one_plus_members_and_failover() -> None:
    config = Path(__file__).resolve().parents[2] / "config"
    workers = yaml.safe_load((config / "envoy-workers.yaml").read_text())
    members = workers["static_resources"]["clusters"][1]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [m["endpoint"]["address"]["socket_address"]["port_value"] for m in members] == [9002, 9003]
    assert _without_worker_settings(workers) == yaml.safe_load((config / "envoy.yaml").read_text())


def _admin_get(supervisor: Supervisor, paths: list[str], headers: dict[str, str] | None = None
               ) -> list[tuple[int, str]]:
    async def scenario() -> list[tuple[int, str]]:
        async with aiohttp.ClientSession() as session:
            runner = web.AppRunner(admin_app(supervisor, session))
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # the bound port
            out = []
            for path in paths:
                async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers or {}) as response:
                    out.append((response.status, await response.text()))
            await runner.cleanup()
            return out

    return asyncio.run(asyncio.wait_for(scenario(), 20))


def test_ready_while_at_least_one_worker_is_ready() -> None:
    supervisor = Supervisor([WorkerSlot(0, 9002, 41000), WorkerSlot(1, 9003, 41001)], lambda slot: [])
    (none_ready, _), = _admin_get(supervisor, ["/readyz"])
    supervisor.workers[1].ready = True
    supervisor.workers[0].restarts = 3
    (one_ready, text), (health, _), (metrics, page) = _admin_get(supervisor, ["/readyz", "/healthz", "/metrics"])
    assert (none_ready, one_ready, health, metrics) == (503, 200, 200, 200)
    assert text == "1/2 workers ready"
    families = {f.name: f for f in text_string_to_metric_families(page)}
    assert families["epp_workers_ready"].samples[0].value == 1
    assert {s.labels["worker"]: s.value for s in families["epp_worker_restarts"].samples} == {"0": 3, "1": 0}


def test_the_admin_token_guards_metrics_and_debug_but_not_the_probes(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    supervisor = Supervisor([WorkerSlot(0, 9002, 41000)], lambda slot: [], admin_token=TokenFile(token))
    statuses = [status for status, _ in _admin_get(supervisor, ["/metrics", "/debug/workers", "/healthz"])]
    assert statuses == [401, 401, 200]
    authorized = _admin_get(supervisor, ["/metrics", "/debug/workers"], {"Authorization": "Bearer s3cret"})
    assert [status for status, _ in authorized] == [200, 200]


def test_the_state_flags_reach_the_serve_options() -> None:
    from epp.server.cli import options_from_args, serve_parser

    args = serve_parser().parse_args(["--state-store", "redis://127.0.0.1:6379/0", "--no-state-load-push",
                                      "--state-replica-id", "east", "--worker-index", "1"])
    options = options_from_args(args)
    assert (options.state_store, options.state_load_push, options.state_replica_id) == \
        ("redis://127.0.0.1:6379/0", False, "east-w1")
    assert options_from_args(serve_parser().parse_args([])).state_load_push is True


def test_every_kind_of_serve_flag_reaches_a_worker_as_the_user_gave_it() -> None:
    from epp.server.cli import serve_parser
    from epp.server.worker_plan import WorkerSlot, worker_argv

    parser = serve_parser()
    given = ["--workers", "2", "--no-state-load-push", "--plain-errors", "--state-store", "redis://h:1/0",
             "--idle-scrape-interval", "250ms", "--pool-name=-odd-name"]
    argv = worker_argv(parser, parser.parse_args(given), WorkerSlot(index=1, grpc_port=9003, metrics_port=9200))
    worker = parser.parse_args(argv)
    assert (worker.state_load_push, worker.plain_errors, worker.state_store) == (False, True, "redis://h:1/0")
    assert (worker.idle_scrape_interval, worker.pool_name, worker.worker_index) == (0.25, "-odd-name", 1)
