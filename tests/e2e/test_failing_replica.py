"""A replica that answers every inference request with 500 (its /metrics still fine) is taken
out of rotation by passive health checking, and comes back once it answers again.

Issue 7, defect 13: before, it drew 24% of the traffic, every request a 500. The picker's
defaults apply: 5 failures in a row eject it for 10 s (``epp/datalayer/passive_health.py``).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from e2e_support import SIM_ARGS, Reply, completion, post  # type: ignore[import-not-found]

from epp.devstack.stack import Stack

FAILURES_TO_EJECT = 5
BASE_EJECTION_SECONDS = 10.0


@pytest.fixture
def fresh_stack(tmp_path: Path) -> Iterator[Stack]:
    with Stack(tmp_path, replicas=3, sim_args=SIM_ARGS, picker_args=["--refresh-metrics-interval", "20ms"]) as running:
        yield running


def set_fault(stack: Stack, replica: int, mode: str) -> None:
    request = urllib.request.Request(f"http://{stack.sim_hostport(replica)}/sim/fault",
                                     data=orjson.dumps({"mode": mode}), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert orjson.loads(response.read()) == {"mode": mode}


async def send_until(stack: Stack, done: Callable[[list[Reply]], bool], limit: int, pause: float = 0.0
                     ) -> list[Reply]:
    """Sequential requests with unique prompts until ``done(replies)`` or ``limit`` requests."""
    replies: list[Reply] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for i in range(limit):
            replies.append(await post(session, stack.url, completion(f"question {i} {time.monotonic()}", max_tokens=2)))
            if done(replies):
                break
            await asyncio.sleep(pause)
    return replies


def test_a_replica_that_answers_errors_stops_getting_traffic_until_it_recovers(fresh_stack: Stack) -> None:
    broken = fresh_stack.sim_hostport(2)
    set_fault(fresh_stack, 2, "error")

    def failed_enough(replies: list[Reply]) -> bool:
        return sum(r.upstream == broken for r in replies) >= FAILURES_TO_EJECT

    first = asyncio.run(send_until(fresh_stack, failed_enough, limit=200))
    assert failed_enough(first), "the failing replica never drew the failures that eject it"
    assert all(r.status == 500 for r in first if r.upstream == broken)
    assert all(r.status == 200 for r in first if r.upstream != broken)

    # Ejected: the others serve everything. At most one request may reach it, the probe sent
    # if this phase ran past the ejection (which ejects it again at once).
    during = asyncio.run(send_until(fresh_stack, lambda _: False, limit=30))
    to_broken = [r for r in during if r.upstream == broken]
    assert len(to_broken) <= 1
    assert sum(r.status == 200 for r in during) >= len(during) - 1

    set_fault(fresh_stack, 2, "ok")

    # Back once the ejection is over: bounded by a base ejection plus a second, doubled one
    # (if the probe above failed) plus slack, at 5 requests a second.
    def served_by_broken(replies: list[Reply]) -> bool:
        return any(r.upstream == broken and r.status == 200 for r in replies)

    after = asyncio.run(send_until(fresh_stack, served_by_broken, limit=int(3 * BASE_EJECTION_SECONDS * 5) + 50,
                                   pause=0.2))
    assert served_by_broken(after), "the replica did not get traffic again after it recovered"
    assert all(r.status == 200 for r in after)
    log = fresh_stack.picker.log_text()  # type: ignore[union-attr]
    assert f"ejected for {BASE_EJECTION_SECONDS:g}s after {FAILURES_TO_EJECT} failed requests in a row" in log
    assert "is back in rotation" in log
