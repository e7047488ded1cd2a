"""``--state-store`` URLs: what is accepted, and errors that name the flag without credentials."""

from __future__ import annotations

import pytest

from epp.errors import ConfigError
from epp.sharedstate.address import StoreAddress, parse_store_url
from epp.sharedstate.replicator import SharedStateSettings


@pytest.mark.parametrize(("url", "address"), [
    ("redis://127.0.0.1:6380/2", StoreAddress("127.0.0.1", 6380, 2)),
    ("redis://cache", StoreAddress("cache", 6379, 0)),
    ("redis://u:p%40ss@cache:1/", StoreAddress("cache", 1, 0, "u", "p@ss")),
])
def test_valid_urls(url: str, address: StoreAddress) -> None:
    assert parse_store_url(url) == address


@pytest.mark.parametrize(("url", "reason"), [
    ("http://cache:6379", "scheme"),
    ("rediss://cache", "scheme"),
    ("redis://:6379", "no host"),
    ("redis://cache:99999", "out of range"),
    ("redis://cache/x", "database must be a number"),
    ("redis://cache/16", "out of range 0-15"),
    ("redis://cache/0?ssl=1", "query"),
])
def test_invalid_urls_name_the_flag(url: str, reason: str) -> None:
    with pytest.raises(ConfigError, match="--state-store") as info:
        parse_store_url(url)
    assert reason in str(info.value)


def test_errors_and_str_never_show_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_store_url("http://user:secret@cache")
    assert "secret" not in str(info.value)
    assert "secret" not in str(parse_store_url("redis://user:secret@cache")) + repr(parse_store_url(
        "redis://user:secret@cache"))


def test_settings_refuse_a_ttl_that_live_replicas_would_outlast() -> None:
    with pytest.raises(ValueError, match="load_ttl"):
        SharedStateSettings(load_period=1.0, load_ttl=0.5)
