"""Standalone pool sources: ``--endpoints``, the pool file, and its watcher."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from epp.datalayer.endpoint import EndpointMetadata
from epp.datalayer.pool import EndpointPool
from epp.datalayer.poolsource import PoolFileWatcher, parse_endpoint_list, parse_hostport, parse_pool_file
from epp.errors import ConfigError


def meta(name: str, address: str, port: int, metrics_port: int | None = None,
         labels: dict[str, str] | None = None) -> EndpointMetadata:
    return EndpointMetadata(name, address, port, metrics_port or port, labels or {})


def members(text: str) -> list[tuple[str, str, int, int, dict[str, str]]]:
    return [(m.name, m.address, m.port, m.metrics_port, dict(m.labels)) for m in parse_pool_file(text, "pool.yaml")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("10.0.0.1:8000", ("10.0.0.1", 8000), id="IPv4"),
        pytest.param(" 10.0.0.1:8000 ", ("10.0.0.1", 8000), id="surrounding spaces"),
        pytest.param("[::1]:8000", ("::1", 8000), id="IPv6 in brackets"),
        pytest.param("[fe80::1:2]:9", ("fe80::1:2", 9), id="IPv6 with several groups"),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, "x") == expected


@pytest.mark.parametrize(
    ("text", "reason_part"),
    [
        pytest.param("10.0.0.1", "ADDRESS:PORT", id="no port"),
        pytest.param(":8000", "ADDRESS:PORT", id="no address"),
        pytest.param("localhost:8000", "must be an IP address", id="a host name"),
        pytest.param("10.0.0.1:http", "port must be an integer", id="a port name"),
        pytest.param("10.0.0.1:0", "1..65535", id="port zero"),
        pytest.param("10.0.0.1:65536", "1..65535", id="a port above 65535"),
        pytest.param("[::1]8000", "ADDRESS:PORT", id="IPv6 without the colon before the port"),
    ],
)
def test_parse_hostport_errors_name_the_field(text: str, reason_part: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_hostport(text, "--endpoints[2]")
    assert err.value.field == "--endpoints[2]"
    assert reason_part in err.value.reason


def test_endpoint_list_is_comma_separated_and_names_each_by_hostport() -> None:
    assert parse_endpoint_list("10.0.0.1:8000, 10.0.0.2:8001,,") == [
        meta("10.0.0.1:8000", "10.0.0.1", 8000), meta("10.0.0.2:8001", "10.0.0.2", 8001)]


def test_endpoint_list_errors_name_the_item_index() -> None:
    with pytest.raises(ConfigError) as err:
        parse_endpoint_list("10.0.0.1:8000,bad")
    assert err.value.field == "--endpoints[1]"


def test_pool_file_entries_shorthand_and_mappings() -> None:
    assert members("""\
endpoints:
  - 127.0.0.1:8001
  - address: 127.0.0.1
    port: 8002
    name: sim-1
    metricsPort: 9090
    labels:
      inference.networking.k8s.io/engine-type: sglang
  - address: 10.0.0.3
    port: 8000
""") == [
        ("127.0.0.1:8001", "127.0.0.1", 8001, 8001, {}),
        ("sim-1", "127.0.0.1", 8002, 9090, {"inference.networking.k8s.io/engine-type": "sglang"}),
        ("10.0.0.3:8000", "10.0.0.3", 8000, 8000, {}),
    ]


def test_ipv6_pool_file_entries() -> None:
    (short,) = parse_pool_file("endpoints:\n- '[fd00::1]:8000'\n")
    assert (short.name, short.address, short.port, short.hostport) == ("[fd00::1]:8000", "fd00::1", 8000,
                                                                       "[fd00::1]:8000")


@pytest.mark.parametrize(
    "parse",
    [
        pytest.param(lambda: parse_pool_file("endpoints:\n- {address: 'fd00::1', port: 8000}\n"),
                     id="a pool file mapping entry"),
        pytest.param(lambda: parse_endpoint_list("[fd00::1]:8000"), id="an --endpoints item"),
    ],
)
def test_an_ipv6_endpoint_is_named_like_its_shorthand_with_brackets(parse: Any) -> None:
    (short,) = parse_pool_file("endpoints:\n- '[fd00::1]:8000'\n")
    (other,) = parse()
    assert short.name == "[fd00::1]:8000"
    assert other.name == short.name


@pytest.mark.parametrize(
    "text",
    [pytest.param("", id="an empty file"), pytest.param("endpoints: []\n", id="an empty list"),
     pytest.param("endpoints:\n", id="a null list")],
)
def test_an_empty_pool_file_has_no_members(text: str) -> None:
    assert parse_pool_file(text) == []


@pytest.mark.parametrize(
    ("text", "field", "reason_part"),
    [
        pytest.param("endpoints:\n- localhost:80\n", "pool.yaml.endpoints[0]", "IP address",
                     id="a shorthand host name"),
        pytest.param("endpoints:\n- 10.0.0.1:1\n- 10.0.0.2\n", "pool.yaml.endpoints[1]", "ADDRESS:PORT",
                     id="a shorthand without port names its index"),
        pytest.param("endpoints:\n- {address: 10.0.0.1}\n", "pool.yaml.endpoints[0]", "address and port are required",
                     id="a mapping without port"),
        pytest.param("endpoints:\n- {address: 10.0.0.1, port: 1, weight: 2}\n", "pool.yaml.endpoints[0].weight",
                     "unknown field", id="an unknown entry field"),
        pytest.param("endpoints:\n- {address: 10.0.0.1, port: 1, metricsPort: 0}\n",
                     "pool.yaml.endpoints[0].metricsPort", "1..65535", id="a metrics port out of range"),
        pytest.param("endpoints:\n- {address: 10.0.0.1, port: 1, labels: {gpu: 8}}\n", "pool.yaml.endpoints[0].labels",
                     "strings to strings", id="a label value that is not a string"),
        pytest.param("endpoints:\n- {address: 10.0.0.1, port: 1, name: 7}\n", "pool.yaml.endpoints[0].name",
                     "must be a string", id="a name that is not a string"),
        pytest.param("endpoints:\n- 7\n", "pool.yaml.endpoints[0]", "ADDRESS:PORT or a mapping",
                     id="an entry that is a number"),
        pytest.param("endpoints:\n- 10.0.0.1:1\n- {address: 10.0.0.2, port: 2, name: '10.0.0.1:1'}\n",
                     "pool.yaml.endpoints[1]", "duplicate endpoint name '10.0.0.1:1' (first at endpoints[0])",
                     id="duplicate names name the second entry"),
        pytest.param("endpoints: {a: 1}\n", "pool.yaml.endpoints", "expected a list", id="endpoints not a list"),
        pytest.param("servers: []\n", "pool.yaml", "'endpoints'", id="an unknown top-level key"),
        pytest.param("endpoints: [\n", "pool.yaml", "not valid YAML", id="invalid YAML"),
    ],
)
def test_pool_file_errors_name_the_field(text: str, field: str, reason_part: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_pool_file(text, "pool.yaml")
    assert err.value.field == field
    assert reason_part in err.value.reason


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        pytest.param("{address: 10.0.0.1, port: 70000}", "pool.yaml.endpoints[0].port", id="a port out of range"),
        pytest.param("{address: 10.0.0.1, port: http}", "pool.yaml.endpoints[0].port", id="a port name"),
        pytest.param("{address: my-host, port: 8000}", "pool.yaml.endpoints[0].address", id="a host name address"),
    ],
)
def test_a_bad_address_or_port_in_a_mapping_entry_names_that_field(entry: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_pool_file(f"endpoints:\n- {entry}\n", "pool.yaml")
    assert err.value.field == field


# --- PoolFileWatcher ---------------------------------------------------------------------------


def names(pool: EndpointPool) -> list[str]:
    return [ep.name for ep in pool.endpoints()]


def test_load_replaces_the_pool_with_the_file_contents(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text("endpoints:\n- 10.0.0.1:8000\n- 10.0.0.2:8000\n")
    pool = EndpointPool()
    watcher = PoolFileWatcher(path, pool)
    watcher.load()
    assert names(pool) == ["10.0.0.1:8000", "10.0.0.2:8000"]
    assert pool.synced
    kept = pool.get("10.0.0.2:8000")
    path.write_text("endpoints:\n- 10.0.0.2:8000\n- 10.0.0.3:8000\n")
    watcher.load()
    assert names(pool) == ["10.0.0.2:8000", "10.0.0.3:8000"]
    assert pool.get("10.0.0.2:8000") is kept


def test_load_of_an_invalid_file_raises_and_keeps_the_pool(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text("endpoints:\n- 10.0.0.1:8000\n")
    pool = EndpointPool()
    watcher = PoolFileWatcher(path, pool)
    watcher.load()
    path.write_text("endpoints:\n- nonsense\n")
    with pytest.raises(ConfigError) as err:
        watcher.load()
    assert err.value.field == f"{path}.endpoints[0]"
    assert names(pool) == ["10.0.0.1:8000"]


def test_load_of_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        PoolFileWatcher(tmp_path / "absent.yaml", EndpointPool()).load()
    assert err.value.field == "--pool-file"
    assert "cannot read" in err.value.reason


async def wait_for(condition: Any, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_watch_reloads_a_changed_file_and_ignores_a_broken_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text("endpoints:\n- 10.0.0.1:8000\n")
    pool = EndpointPool()
    watcher = PoolFileWatcher(path, pool, poll_interval=0.01)
    watcher.load()
    task = asyncio.create_task(watcher.watch())
    try:
        path.write_text("endpoints:\n- 10.0.0.1:8000\n- 10.0.0.9:8000\n")
        await wait_for(lambda: len(pool.endpoints()) == 2)
        path.write_text("endpoints: [unterminated\n")
        await wait_for(lambda: any("pool file change ignored" in r.getMessage() for r in caplog.records))
        assert names(pool) == ["10.0.0.1:8000", "10.0.0.9:8000"]
        path.write_text("endpoints:\n- 10.0.0.5:8000\n")
        await wait_for(lambda: names(pool) == ["10.0.0.5:8000"])
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --- reload safety: settled files only, parsed off the event loop, linear checks -------------


def watched(tmp_path: Path, text: str) -> tuple[Path, EndpointPool, PoolFileWatcher]:
    path = tmp_path / "pool.yaml"
    path.write_text(text)
    pool = EndpointPool()
    watcher = PoolFileWatcher(path, pool, poll_interval=0.01)
    watcher.load()
    return path, pool, watcher


FULL = "endpoints:\n- 10.0.0.1:8000\n- 10.0.0.2:8000\n- 10.0.0.3:8000\n"


async def test_half_written_pool_file_does_not_shrink_the_pool(tmp_path: Path) -> None:
    path, pool, watcher = watched(tmp_path, FULL)
    half = "endpoints:\n- 10.0.0.1:8000\n- 10.0.0.4:8000\n"  # valid YAML: the tail is not written yet
    with path.open("w") as out:
        out.write(half)
        out.flush()
        assert await watcher.poll() is False
        assert names(pool) == ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]
        out.write("- 10.0.0.5:8000\n")
    assert await watcher.poll() is False  # changed again since the last poll: still settling
    assert len(pool.endpoints()) == 3
    assert await watcher.poll() is True
    assert names(pool) == ["10.0.0.1:8000", "10.0.0.4:8000", "10.0.0.5:8000"]


async def test_a_pool_file_that_fails_to_parse_is_never_applied_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, pool, watcher = watched(tmp_path, FULL)
    path.write_text("endpoints:\n- 10.0.0.1:8000\n- {address: 10.0.0.2, por")
    for _ in range(5):
        assert await watcher.poll() is False
    assert len(pool.endpoints()) == 3
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["pool file change ignored, keeping 3 endpoints"]


async def test_a_pool_file_touched_without_change_is_not_reapplied(tmp_path: Path) -> None:
    path, pool, watcher = watched(tmp_path, FULL)
    path.write_text(FULL)
    assert [await watcher.poll() for _ in range(3)] == [False, False, False]
    assert len(pool.endpoints()) == 3


async def test_a_pool_file_replaced_by_rename_is_applied_after_two_polls(tmp_path: Path) -> None:
    path, pool, watcher = watched(tmp_path, FULL)
    staged = tmp_path / "pool.yaml.tmp"
    staged.write_text("endpoints:\n- 10.0.0.9:8000\n")
    staged.replace(path)
    assert [await watcher.poll(), await watcher.poll()] == [False, True]
    assert names(pool) == ["10.0.0.9:8000"]


async def test_pool_file_reload_parses_in_a_worker_thread_not_on_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import epp.datalayer.poolsource as poolsource

    path, pool, watcher = watched(tmp_path, FULL)
    parsed_on: list[int] = []

    def recording_parse(text: str, source: str = "pool file") -> list[EndpointMetadata]:
        parsed_on.append(threading.get_ident())
        return parse_pool_file(text, source)

    monkeypatch.setattr(poolsource, "parse_pool_file", recording_parse)
    path.write_text("endpoints:\n- 10.0.0.7:8000\n")
    assert [await watcher.poll(), await watcher.poll()] == [False, True]
    assert names(pool) == ["10.0.0.7:8000"]
    assert parsed_on and threading.get_ident() not in parsed_on


def twenty_thousand(extra: str = "") -> str:
    return "endpoints:\n" + "".join(f"- 10.0.{i // 256}.{i % 256}:8000\n" for i in range(20_000)) + extra


def test_20000_entry_pool_file_duplicate_check_names_the_duplicate() -> None:
    assert len(parse_pool_file(twenty_thousand(), "pool.yaml")) == 20_000
    with pytest.raises(ConfigError) as err:
        parse_pool_file(twenty_thousand("- {address: 10.0.1.2, port: 8000}\n"), "pool.yaml")
    assert err.value.field == "pool.yaml.endpoints[20000]"
    assert "duplicate endpoint name '10.0.1.2:8000' (first at endpoints[258])" in err.value.reason


async def test_20000_entry_pool_file_reload_replaces_the_pool(tmp_path: Path) -> None:
    path, pool, watcher = watched(tmp_path, FULL)
    path.write_text(twenty_thousand())
    assert [await watcher.poll(), await watcher.poll()] == [False, True]
    assert len(pool.endpoints()) == 20_000


async def test_a_deleted_pool_file_keeps_the_pool_and_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, pool, watcher = watched(tmp_path, FULL)
    path.unlink()
    for _ in range(3):
        assert await watcher.poll() is False
    assert len(pool.endpoints()) == 3
    assert len([r for r in caplog.records if "cannot read" in r.getMessage()]) == 1
