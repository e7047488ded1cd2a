"""Membership changes and model servers that die or hang, with traffic flowing through Envoy."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import SIM_ARGS, completion, post_many  # type: ignore[import-not-found]

from epp.devstack.stack import Stack


@pytest.fixture
def fresh_stack(tmp_path: Path) -> Iterator[Stack]:
    with Stack(tmp_path, replicas=3, sim_args=SIM_ARGS,
               picker_args=["--refresh-metrics-interval", "20ms", "--scrape-timeout", "300ms"]) as running:
        yield running


def served(stack: Stack, n: int = 24) -> tuple[list[int], Counter[str]]:
    import asyncio

    replies = asyncio.run(post_many(stack.url, [completion(f"p{i}", max_tokens=2) for i in range(n)], concurrent=False))
    return [r.status for r in replies], Counter(r.upstream for r in replies)


def test_removed_endpoint_gets_no_new_requests(fresh_stack: Stack) -> None:
    statuses, before = served(fresh_stack)
    assert statuses == [200] * 24
    assert len(before) == 3
    fresh_stack.write_pool([0, 1])
    time.sleep(1.0)  # the pool file is polled every 250 ms
    statuses, after = served(fresh_stack)
    assert statuses == [200] * 24
    assert set(after) == {fresh_stack.sim_hostport(0), fresh_stack.sim_hostport(1)}
    fresh_stack.write_pool()
    time.sleep(1.0)
    _, restored = served(fresh_stack, 40)
    assert fresh_stack.sim_hostport(2) in restored


def test_a_simulator_that_dies_does_not_break_other_requests(fresh_stack: Stack) -> None:
    fresh_stack.sims[2].signal(signal.SIGKILL)
    fresh_stack.sims[2].proc.wait(5)  # type: ignore[union-attr]
    time.sleep(0.5)  # a few failed scrapes mark it not ready
    statuses, seen = served(fresh_stack)
    assert statuses == [200] * 24
    assert fresh_stack.sim_hostport(2) not in seen
    assert "scrape failed" in fresh_stack.picker.log_text()  # type: ignore[union-attr]


def test_a_simulator_that_hangs_is_routed_around(fresh_stack: Stack) -> None:
    fresh_stack.sims[1].signal(signal.SIGSTOP)
    try:
        time.sleep(1.5)  # 3 scrapes time out after 300 ms each
        statuses, seen = served(fresh_stack)
        assert statuses == [200] * 24
        assert fresh_stack.sim_hostport(1) not in seen
    finally:
        fresh_stack.sims[1].signal(signal.SIGCONT)
    time.sleep(0.5)
    _, recovered = served(fresh_stack, 40)
    assert fresh_stack.sim_hostport(1) in recovered
