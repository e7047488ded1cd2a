"""Passive health checking: endpoints whose responses keep failing are ejected for a while."""

from __future__ import annotations

import logging
import random

import orjson
import pytest

from epp.datalayer.endpoint import Endpoint, EndpointMetadata
from epp.datalayer.passive_health import EjectionPolicy, PassiveHealth, is_failure, outlier_view, routable
from epp.datalayer.pool import EndpointPool


def make_pool(n: int) -> EndpointPool:
    pool = EndpointPool()
    pool.replace_all(EndpointMetadata(f"ep-{i}", "10.0.0.1", 8000 + i, 8000 + i) for i in range(n))
    return pool


def fail(health: PassiveHealth, endpoint: Endpoint, times: int, now: float | None, status: int = 500) -> None:
    for _ in range(times):
        health.record(endpoint, status, now)


def test_a_replica_that_answers_errors_stops_getting_traffic() -> None:
    # Issue 7, defect 13: 12 req/s over 3 replicas for 12 s, one answering 500 to everything.
    pool = make_pool(3)
    broken = pool.endpoints()[2]
    health = PassiveHealth(pool)
    rng = random.Random(7)
    sent_to_broken = 0
    for i in range(145):
        now = i / 12
        chosen = rng.choice(routable(pool.endpoints(), now))
        if chosen is broken:
            sent_to_broken += 1
        health.record(chosen, 500 if chosen is broken else 200, now)
    # 5 failures to eject it, then at most one probe once the 10 s ejection ends (which
    # ejects it again at once); a third of 145 (about 48) without passive health.
    assert 5 <= sent_to_broken <= 6


def test_five_failures_in_a_row_eject_for_the_base_time() -> None:
    pool = make_pool(3)
    ep = pool.endpoints()[0]
    health = PassiveHealth(pool)
    fail(health, ep, 4, now=100.0)
    assert ep.available(100.0)
    health.record(ep, 500, 100.0)
    assert not ep.available(100.0)
    assert ep.ejected_until == 110.0
    assert not ep.available(109.9)
    assert ep.available(110.0)
    assert ep.ready  # scrape readiness is a separate signal and is left alone


def test_a_success_clears_the_failure_count() -> None:
    pool = make_pool(3)
    ep = pool.endpoints()[0]
    health = PassiveHealth(pool)
    fail(health, ep, 4, now=1.0)
    health.record(ep, 200, 1.0)
    fail(health, ep, 4, now=1.0)
    assert ep.available(1.0)


@pytest.mark.parametrize("status", [0, 500, 502, 503, 504, 507])
def test_server_errors_and_no_response_count_as_failures(status: int) -> None:
    pool = make_pool(3)
    ep = pool.endpoints()[0]
    fail(PassiveHealth(pool), ep, 5, now=1.0, status=status)
    assert not ep.available(1.0)


@pytest.mark.parametrize("status", [200, 204, 400, 404, 413, 429])
def test_client_errors_and_overload_are_not_failures(status: int) -> None:
    pool = make_pool(3)
    ep = pool.endpoints()[0]
    fail(PassiveHealth(pool), ep, 50, now=1.0, status=status)
    assert ep.available(1.0)
    assert not is_failure(status)


def test_one_failure_after_the_ejection_ejects_again_for_longer_up_to_the_cap() -> None:
    pool = make_pool(3)
    ep = pool.endpoints()[0]
    health = PassiveHealth(pool, EjectionPolicy(base_ejection_time=10, max_ejection_time=35))
    fail(health, ep, 5, now=0.0)
    ends = [ep.ejected_until]
    for _ in range(4):
        now = ep.ejected_until
        health.record(ep, 503, now)  # the first result after the ejection decides
        ends.append(ep.ejected_until)
    durations = [round(b - a, 6) for a, b in zip([0.0, *ends], ends, strict=False)]
    assert durations == [10, 20, 30, 35, 35]


def test_a_success_after_the_ejection_puts_it_back_and_resets_the_backoff() -> None:
    pool = make_pool(3)
    ep = pool.endpoints()[0]
    health = PassiveHealth(pool)
    fail(health, ep, 5, now=0.0)
    health.record(ep, 500, 10.0)  # probe failed: 20 s
    assert ep.ejected_until == 30.0
    health.record(ep, 200, 30.0)
    fail(health, ep, 4, now=31.0)
    assert ep.available(31.0)  # back to needing five in a row
    health.record(ep, 500, 31.0)
    assert ep.ejected_until == 41.0  # and to the base time


def test_results_arriving_during_the_ejection_are_ignored() -> None:
    pool = make_pool(3)
    ep = pool.endpoints()[0]
    health = PassiveHealth(pool)
    fail(health, ep, 5, now=0.0)
    health.record(ep, 200, 5.0)  # a request routed before the ejection, finishing now
    assert not ep.available(5.0)
    fail(health, ep, 10, now=6.0)
    assert ep.ejected_until == 10.0


def test_at_most_half_the_pool_is_ejected() -> None:
    pool = make_pool(4)
    a, b, c, d = pool.endpoints()
    health = PassiveHealth(pool)
    for ep in (a, b, c):
        fail(health, ep, 5, now=0.0)
    assert [ep.available(0.0) for ep in (a, b, c, d)] == [False, False, True, True]


def test_a_pool_of_three_ejects_one() -> None:
    pool = make_pool(3)
    a, b, c = pool.endpoints()
    health = PassiveHealth(pool)
    fail(health, a, 5, now=0.0)
    fail(health, b, 5, now=0.0)
    assert not a.available(0.0) and b.available(0.0)
    # Once a is back, b's next failure can take its place.
    health.record(a, 200, 10.0)
    health.record(b, 500, 10.0)
    assert a.available(10.0) and not b.available(10.0)


def test_the_last_available_endpoint_is_never_ejected(caplog: pytest.LogCaptureFixture) -> None:
    pool = make_pool(2)
    failing, other = pool.endpoints()
    pool.set_ready(other, False)  # its scrapes fail
    health = PassiveHealth(pool)
    with caplog.at_level(logging.INFO, logger="epp.datalayer.passive_health"):
        fail(health, failing, 20, now=0.0)
    assert failing.available(0.0)
    assert len(caplog.records) == 1
    assert "stays in rotation" in caplog.records[0].getMessage()


def test_a_single_endpoint_pool_is_never_ejected() -> None:
    pool = make_pool(1)
    (only,) = pool.endpoints()
    fail(PassiveHealth(pool), only, 20, now=0.0)
    assert only.available(0.0)


def test_one_log_line_per_ejection_and_per_return(caplog: pytest.LogCaptureFixture) -> None:
    pool = make_pool(3)
    ep = pool.endpoints()[0]
    ejections: list[str] = []
    health = PassiveHealth(pool, on_eject=lambda e: ejections.append(e.name))
    with caplog.at_level(logging.INFO, logger="epp.datalayer.passive_health"):
        fail(health, ep, 12, now=0.0)
        fail(health, ep, 3, now=10.0, status=502)
        health.record(ep, 200, 30.0)
        for i in range(20):
            health.record(ep, 200, 31.0 + i)
    assert [r.getMessage() for r in caplog.records] == [
        "endpoint ep-0 ejected for 10s after 5 failed requests in a row (last status 500)",
        "endpoint ep-0 ejected again for 20s: its first request after the last ejection failed (status 502; "
        "ejection 2 in a row)",
        "endpoint ep-0 is back in rotation: answered 200 after being ejected 20.0s",
    ]
    assert ejections == ["ep-0", "ep-0"]


def test_routable_prefers_available_then_ready_then_everything() -> None:
    pool = make_pool(3)
    a, b, c = pool.endpoints()
    health = PassiveHealth(pool, EjectionPolicy(max_ejection_percent=100))
    fail(health, a, 5, now=0.0)
    assert routable((a, b, c), 1.0) == [b, c]
    pool.set_ready(c, False)
    assert routable((a, b, c), 1.0) == [b]
    assert routable((a,), 1.0) == [a]  # a subset hint naming only the ejected one still routes
    pool.set_ready(b, False)
    assert routable((a, b, c), 1.0) == [a]  # ejected but ready beats not ready
    pool.set_ready(a, False)
    assert routable((a, b, c), 1.0) == [a, b, c]
    assert routable((a, b, c), 10.0) == [a, b, c]


def test_the_clock_is_read_when_no_time_is_given() -> None:
    pool = make_pool(3)
    ep = pool.endpoints()[0]
    now = [50.0]
    health = PassiveHealth(pool, clock=lambda: now[0])
    fail(health, ep, 5, now=None)
    assert ep.ejected_until == 60.0


def test_zero_consecutive_failures_turns_ejection_off() -> None:
    pool = make_pool(3)
    ep = pool.endpoints()[0]
    fail(PassiveHealth(pool, EjectionPolicy(consecutive_failures=0)), ep, 100, now=0.0)
    assert ep.available(0.0)


@pytest.mark.parametrize("kwargs", [
    {"consecutive_failures": -1}, {"base_ejection_time": 0}, {"base_ejection_time": float("nan")},
    {"max_ejection_time": float("inf")}, {"max_ejection_percent": 0}, {"max_ejection_percent": 101},
])
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        EjectionPolicy(**kwargs)  # type: ignore[arg-type]


def test_an_endpoint_that_rejoins_under_a_new_address_starts_clean() -> None:
    pool = make_pool(3)
    ep = pool.endpoints()[0]
    fail(PassiveHealth(pool), ep, 5, now=0.0)
    pool.replace_all([EndpointMetadata("ep-0", "10.0.0.9", 8000, 8000),
                      *(e.metadata for e in pool.endpoints()[1:])])
    rejoined = pool.get("ep-0")
    assert rejoined is not None and rejoined is not ep
    assert rejoined.available(0.0)


def test_the_debug_view_is_json() -> None:
    pool = make_pool(3)
    ep = pool.endpoints()[0]
    fail(PassiveHealth(pool), ep, 5, now=0.0)
    view = outlier_view(ep, 4.0)
    assert orjson.loads(orjson.dumps(view)) == {
        "ejected": True, "ejectedForSeconds": 6.0, "consecutiveFailures": 0, "ejectionsInARow": 1,
        "onProbation": True}
    assert outlier_view(pool.endpoints()[1], 4.0)["ejected"] is False
