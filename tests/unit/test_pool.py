"""The endpoint pool: membership diffs, listeners, readiness and metadata updates."""

from __future__ import annotations

import pytest

from epp.datalayer.endpoint import Endpoint, EndpointMetadata, Metrics
from epp.datalayer.pool import EndpointPool, PoolStatistics
from epp.testing.pool import PoolRecorder, RestartAwareRecorder


def meta(name: str, address: str = "10.0.0.1", port: int = 8000, metrics_port: int | None = None,
         labels: dict[str, str] | None = None) -> EndpointMetadata:
    return EndpointMetadata(name, address, port, metrics_port or port, labels or {})


def names(endpoints: tuple[Endpoint, ...] | list[Endpoint]) -> list[str]:
    return [ep.name for ep in endpoints]


def test_a_new_pool_is_empty_and_not_synced() -> None:
    pool = EndpointPool()
    assert pool.endpoints() == () and pool.ready_endpoints() == ()
    assert pool.statistics() == PoolStatistics(endpoints=0, ready=0, synced=False)


def test_replace_all_returns_the_diff_and_keeps_surviving_endpoints() -> None:
    pool = EndpointPool()
    added, removed = pool.replace_all([meta("a", "10.0.0.1"), meta("b", "10.0.0.2")])
    assert (names(added), removed) == (["a", "b"], [])
    b = pool.get("b")
    assert b is not None
    b.metrics = Metrics(waiting_queue_size=4)
    added, removed = pool.replace_all([meta("b", "10.0.0.2"), meta("c", "10.0.0.3")])
    assert (names(added), names(removed)) == (["c"], ["a"])
    assert names(pool.endpoints()) == ["b", "c"]
    assert pool.get("b") is b and b.metrics.waiting_queue_size == 4
    assert pool.get("a") is None


def test_replacing_with_the_same_members_changes_nothing() -> None:
    pool = EndpointPool()
    pool.replace_all([meta("a")])
    before = pool.endpoints()
    assert pool.replace_all([meta("a")]) == ([], [])
    assert pool.endpoints() == before


def test_listeners_hear_removals_then_additions() -> None:
    pool = EndpointPool()
    recorder = PoolRecorder()
    pool.add_listener(recorder)
    pool.replace_all([meta("a"), meta("b", "10.0.0.2")])
    pool.replace_all([meta("b", "10.0.0.2"), meta("c", "10.0.0.3")])
    pool.replace_all([])
    assert recorder.events == [
        ("added", "a"), ("added", "b"),
        ("removed", "a"), ("added", "c"),
        ("removed", "b"), ("removed", "c"),
    ]


def test_a_metadata_change_keeps_the_endpoint_object_metrics_and_readiness() -> None:
    pool = EndpointPool()
    recorder = PoolRecorder()
    pool.add_listener(recorder)
    pool.replace_all([meta("a", "10.0.0.1", 8000)])
    a = pool.get("a")
    assert a is not None
    a.metrics = Metrics(kv_cache_usage_percent=0.5)
    pool.set_ready(a, False)
    added, removed = pool.replace_all([meta("a", "10.0.0.1", 8000, 9090, {"tier": "gold"})])
    assert (added, removed) == ([], [])
    assert recorder.events == [("added", "a")]
    assert pool.get("a") is a
    assert (a.metadata.metrics_port, dict(a.metadata.labels)) == (9090, {"tier": "gold"})
    assert a.metrics.kv_cache_usage_percent == 0.5 and a.ready is False


def test_a_new_address_under_the_same_name_is_a_new_endpoint() -> None:
    pool = EndpointPool()
    recorder = PoolRecorder()
    pool.add_listener(recorder)
    pool.replace_all([meta("a", "10.0.0.1", 8000)])
    old = pool.get("a")
    assert old is not None
    old.metrics = Metrics(kv_cache_usage_percent=0.5)
    added, removed = pool.replace_all([meta("a", "10.0.0.7", 9000)])
    new = pool.get("a")
    assert new is not None and new is not old
    assert (removed, added) == ([old], [new])
    assert recorder.events == [("added", "a"), ("removed", "a"), ("added", "a")]
    assert new.hostport == "10.0.0.7:9000"
    assert new.metrics == Metrics() and new.ready is True


def test_duplicate_names_in_one_update_are_rejected() -> None:
    pool = EndpointPool()
    with pytest.raises(ValueError, match="duplicate endpoint name 'a'"):
        pool.replace_all([meta("a"), meta("a", "10.0.0.2")])


def test_ready_endpoints_follow_set_ready() -> None:
    pool = EndpointPool()
    pool.replace_all([meta("a"), meta("b", "10.0.0.2"), meta("c", "10.0.0.3")])
    b = pool.get("b")
    assert b is not None
    assert names(pool.ready_endpoints()) == ["a", "b", "c"]
    pool.set_ready(b, False)
    assert names(pool.ready_endpoints()) == ["a", "c"]
    assert pool.statistics() == PoolStatistics(endpoints=3, ready=2, synced=True)
    pool.set_ready(b, True)
    assert names(pool.ready_endpoints()) == ["a", "b", "c"]


def test_the_ready_list_is_cached_until_readiness_or_membership_changes() -> None:
    pool = EndpointPool()
    pool.replace_all([meta("a"), meta("b", "10.0.0.2")])
    first = pool.ready_endpoints()
    assert pool.ready_endpoints() is first
    a = pool.get("a")
    assert a is not None
    pool.set_ready(a, True)  # no change: the cache stays
    assert pool.ready_endpoints() is first
    pool.replace_all([meta("a"), meta("b", "10.0.0.2"), meta("c", "10.0.0.3")])
    assert names(pool.ready_endpoints()) == ["a", "b", "c"]


def test_an_empty_update_still_marks_the_pool_synced() -> None:
    pool = EndpointPool()
    pool.replace_all([])
    assert pool.synced


def test_a_restart_is_removed_then_added_for_listeners_without_endpoint_restarted() -> None:
    pool = EndpointPool()
    pool.replace_all([meta("a"), meta("b", "10.0.0.2")])
    plain, aware = PoolRecorder(), RestartAwareRecorder()
    pool.add_listener(plain)
    pool.add_listener(aware)
    endpoint = pool.get("a")
    assert endpoint is not None
    pool.restarted(endpoint)
    assert plain.events == [("removed", "a"), ("added", "a")]
    assert aware.events == [("restarted", "a")]
    assert pool.get("a") is endpoint and names(pool.endpoints()) == ["a", "b"]


def test_a_restart_of_an_endpoint_no_longer_in_the_pool_is_ignored() -> None:
    pool = EndpointPool()
    pool.replace_all([meta("a")])
    old = pool.get("a")
    assert old is not None
    pool.replace_all([meta("a", port=9000)])  # same name, another server: a new Endpoint
    listener = PoolRecorder()
    pool.add_listener(listener)
    pool.restarted(old)
    assert listener.events == []
