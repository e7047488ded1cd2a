"""``epp serve --workers 2`` through real Envoy (config/envoy-workers.yaml): streams spread over
both workers, and a worker SIGKILLed under load fails at most the requests in flight."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from e2e_support import SIM_ARGS, completion, post, wait_until  # type: ignore[import-not-found]

from epp.devstack.workers import WorkersStack

RATE = 50.0
REQUESTS = 200
KILL_AT = 60


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _requests_per_worker(stack: WorkersStack) -> dict[str, float]:
    counts: dict[str, float] = {}
    pattern = r'^inference_objective_request_total\{worker="(\d+)",[^}]*\} (\S+)$'
    for worker, value in re.findall(pattern, _get(stack.admin_url + "/metrics"), re.M):
        counts[worker] = counts.get(worker, 0.0) + float(value)
    return counts


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkersStack]:
    running = WorkersStack(tmp_path_factory.mktemp("workers"), replicas=2, workers=2, sim_args=SIM_ARGS,
                           picker_args=["--refresh-metrics-interval", "20ms"])
    running.start()  # returns with both workers ready and healthy in Envoy
    try:
        yield running
    finally:
        running.stop()


def test_requests_spread_over_both_workers(stack: WorkersStack) -> None:
    before = _requests_per_worker(stack)

    async def send() -> list[int]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            return [(await post(session, stack.url, completion(f"spread {i}"))).status for i in range(20)]

    assert asyncio.run(send()) == [200] * 20
    after = _requests_per_worker(stack)
    served = {w: after.get(w, 0.0) - before.get(w, 0.0) for w in ("0", "1")}
    # Round robin over the two ext_proc members: one stream each in turn.
    assert served == {"0": 10.0, "1": 10.0}


async def _load_with_kill(url: str, kill: Any) -> tuple[list[int], int]:
    """REQUESTS at RATE per second; ``kill`` runs as request KILL_AT is sent. Returns statuses and
    how many requests were in flight at the kill."""
    in_flight = 0
    at_kill = 0

    async def one(session: aiohttp.ClientSession, i: int) -> int:
        nonlocal in_flight
        in_flight += 1
        try:
            return (await post(session, url, completion(f"load {i}", max_tokens=64))).status
        except (aiohttp.ClientError, TimeoutError):
            return 599
        finally:
            in_flight -= 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        start = time.monotonic()
        tasks = []
        for i in range(REQUESTS):
            await asyncio.sleep(max(0.0, start + i / RATE - time.monotonic()))
            if i == KILL_AT:
                at_kill = in_flight
                kill()
            tasks.append(asyncio.create_task(one(session, i)))
        return list(await asyncio.gather(*tasks)), at_kill


def test_a_killed_worker_fails_only_its_in_flight_requests_and_comes_back(stack: WorkersStack,
                                                                            record_property: Any) -> None:
    victim = stack.worker_states()[1]
    statuses, in_flight = asyncio.run(_load_with_kill(stack.url, lambda: os.kill(victim["pid"], signal.SIGKILL)))
    errors = sum(s != 200 for s in statuses)
    record_property("client_errors", errors)
    record_property("in_flight_at_kill", in_flight)
    print(f"\nworker SIGKILLed under load: {errors} of {len(statuses)} requests failed; "
          f"{in_flight} were in flight (over both workers) at the kill; failed: "
          f"{[(i, s) for i, s in enumerate(statuses) if s != 200]}")
    # Only streams open on the killed worker may fail (about half of those in flight); the
    # surviving worker serves everything else.
    assert errors <= in_flight
    assert statuses[KILL_AT + 25:].count(200) == len(statuses[KILL_AT + 25:])
    # The supervisor restarts it, logged, and it rejoins.
    wait_until(lambda: (back := stack.worker_states()[1])["ready"] and back["pid"] != victim["pid"], timeout=20)
    assert stack.worker_states()[1]["restarts"] == 1
    assert "worker 1 exited with code -9" in stack.picker.log_text()  # type: ignore[union-attr]


def test_sigterm_stops_the_supervisor_and_every_worker(stack: WorkersStack) -> None:
    pids = [w["pid"] for w in stack.worker_states()]
    assert stack.picker is not None
    assert stack.picker.stop(timeout=20) == 0

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(lambda: all(gone(pid) for pid in pids), timeout=10)
