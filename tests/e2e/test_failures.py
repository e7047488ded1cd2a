"""Membership changes and model servers that die or hang, with traffic flowing through Envoy."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import SIM_ARGS, completion, post_many, wait_until  # type: ignore[import-not-found]

from epp.devstack.stack import Stack


@pytest.fixture
def fresh_stack(tmp_path: Path) -> Iterator[Stack]:
    with Stack(tmp_path, replicas=3, sim_args=SIM_ARGS,
               picker_args=["--refresh-metrics-interval", "20ms", "--scrape-timeout", "300ms"]) as running:
        yield running


def served(stack: Stack, n: int = 24) -> tuple[list[int], Counter[str]]:
    replies = asyncio.run(post_many(stack.url, [completion(f"p{i}", max_tokens=2) for i in range(n)], concurrent=False))
    return [r.status for r in replies], Counter(r.upstream for r in replies)


def picker_endpoints(stack: Stack) -> dict[str, dict[str, Any]]:
    """The picker's own view of the pool (``/debug/endpoints``), by address."""
    with urllib.request.urlopen(f"{stack.admin_url}/debug/endpoints", timeout=5) as response:
        return {e["address"]: e for e in json.load(response)["endpoints"]}


def test_removed_endpoint_gets_no_new_requests(fresh_stack: Stack) -> None:
    statuses, before = served(fresh_stack)
    assert statuses == [200] * 24
    assert len(before) == 3
    fresh_stack.write_pool([0, 1])
    kept = {fresh_stack.sim_hostport(0), fresh_stack.sim_hostport(1)}
    wait_until(lambda: set(picker_endpoints(fresh_stack)) == kept)  # the picker has applied the new pool
    statuses, after = served(fresh_stack)
    assert statuses == [200] * 24
    assert set(after) == kept
    fresh_stack.write_pool()
    wait_until(lambda: len(picker_endpoints(fresh_stack)) == 3)
    _, restored = served(fresh_stack, 40)
    assert fresh_stack.sim_hostport(2) in restored


def test_a_simulator_that_dies_does_not_break_other_requests(fresh_stack: Stack) -> None:
    dead = fresh_stack.sim_hostport(2)
    fresh_stack.sims[2].signal(signal.SIGKILL)
    fresh_stack.sims[2].proc.wait(5)  # type: ignore[union-attr]
    wait_until(lambda: not picker_endpoints(fresh_stack)[dead]["ready"])  # failed scrapes marked it not ready
    statuses, seen = served(fresh_stack)
    assert statuses == [200] * 24
    assert dead not in seen
    assert "scrape failed" in fresh_stack.picker.log_text()  # type: ignore[union-attr]


def test_a_simulator_that_hangs_is_routed_around(fresh_stack: Stack) -> None:
    frozen = fresh_stack.sim_hostport(1)
    fresh_stack.sims[1].signal(signal.SIGSTOP)
    try:
        wait_until(lambda: not picker_endpoints(fresh_stack)[frozen]["ready"])  # scrapes timed out
        statuses, seen = served(fresh_stack)
        assert statuses == [200] * 24
        assert frozen not in seen
    finally:
        fresh_stack.sims[1].signal(signal.SIGCONT)
    wait_until(lambda: picker_endpoints(fresh_stack)[frozen]["ready"])  # a good scrape made it ready again
    _, recovered = served(fresh_stack, 40)
    assert frozen in recovered
