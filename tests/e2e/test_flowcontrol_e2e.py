"""Flow control through real Envoy: under overload, interactive requests go first, batch waits or is shed.

The stack runs the shipped ``config/flow-control.yaml`` and ``config/objectives.yaml``
with a batch band of 6 requests. The ordering test needs an exact capacity: there the
saturation detector is ``concurrency-detector`` (the picker's own in-flight count against
two requests per simulator, and one saturation ceiling for every band), so "the pool is
full" is a fact the test creates, not a timing, and the simulators are frozen (SIGSTOP)
so nothing completes and nothing is dispatched until the test lets them go. The flood test keeps the shipped
``utilization-detector`` and overloads real simulators.

Envoy strips the control headers from clients (``config/envoy.yaml``); here the objective
header passes, standing for a gateway that sets it from a trusted source (README,
"Flow control").
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from e2e_support import SIM_ARGS, Reply, completion, post  # type: ignore[import-not-found]

from epp.devstack.envoy import CONTROL_REQUEST_HEADERS
from epp.devstack.stack import Stack
from epp.testing.errors import error_message
from epp.testing.waiting import eventually as wait_for_condition

REPO = Path(__file__).resolve().parents[2]
BATCH_BAND_REQUESTS = 6
SLOTS_PER_SIM = 2
SIMS = 2


def shipped_config(exact_capacity: bool, **flow_control: Any) -> str:
    """The shipped flow-control config with a small batch band; ``exact_capacity``: with the
    concurrency detector (see the module docstring) instead of the utilization detector."""
    doc = yaml.safe_load((REPO / "config" / "flow-control.yaml").read_text())
    if exact_capacity:
        doc["plugins"].append({"type": "concurrency-detector", "parameters": {"maxConcurrency": SLOTS_PER_SIM}})
        doc["saturationDetector"] = {"pluginRef": "concurrency-detector"}
    for band in doc["flowControl"]["priorityBands"]:
        if band["priority"] < 0:
            band["maxRequests"] = BATCH_BAND_REQUESTS
    doc["flowControl"].update(flow_control)
    return yaml.safe_dump(doc)


def flow_control_stack(workdir: Path, config: str, sim_args: list[str]) -> Stack:
    objectives = workdir / "objectives.yaml"
    objectives.write_text((REPO / "config" / "objectives.yaml").read_text())
    trusted = [h for h in CONTROL_REQUEST_HEADERS if h != "x-gateway-inference-objective"]
    return Stack(workdir, replicas=SIMS, sim_args=sim_args, config_text=config,
                 picker_args=["--refresh-metrics-interval", "20ms", "--objectives-file", str(objectives)],
                 envoy_options={"strip_headers": trusted})


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    # One ceiling for every band, so "full" means every slot (the shipped priority holdback
    # would keep the fillers from filling the pool: they are priority 0, ceiling 0.75).
    config = shipped_config(exact_capacity=True, usageLimitPolicyPluginRef="static-usage-limit-policy")
    with flow_control_stack(tmp_path, config, SIM_ARGS) as running:
        yield running


@contextmanager
def frozen(stack: Stack) -> Iterator[None]:
    """Simulators stopped: requests already sent to them neither progress nor complete."""
    for sim in stack.sims:
        sim.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for sim in stack.sims:
            sim.signal(signal.SIGCONT)


async def admin(session: aiohttp.ClientSession, stack: Stack, path: str) -> Any:
    async with session.get(stack.admin_url + path) as response:
        assert response.status == 200, await response.text()
        return await response.json()


# Through Envoy and real scrapes: allow more than the helper's default 5 s.
eventually = functools.partial(wait_for_condition, timeout=10.0)


def band_counts(snapshot: dict[str, Any]) -> dict[int, int]:
    return {band["priority"]: band["queuedRequests"] for band in snapshot["bands"]}


async def test_interactive_requests_are_served_first_while_batch_waits_or_is_shed(stack: Stack) -> None:
    capacity = SIMS * SLOTS_PER_SIM
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        def send(kind: str, i: int, objective: str | None, max_tokens: int = 4) -> asyncio.Task[Reply]:
            headers = {"x-request-id": f"{kind}-{i}"}
            if objective is not None:
                headers["x-gateway-inference-objective"] = objective
            return asyncio.create_task(post(session, stack.url, completion(f"{kind} {i}", max_tokens=max_tokens),
                                            headers=headers))

        async def queue_state() -> dict[int, int]:
            return band_counts(await admin(session, stack, "/debug/flowcontrol"))

        assert (await post(session, stack.url, completion("warm up"))).status == 200
        with frozen(stack):
            # Fill every slot: these reach the frozen simulators and stay in flight until the thaw.
            fillers = [send("filler", i, None) for i in range(capacity)]

            async def fillers_routed() -> bool:
                decisions = (await admin(session, stack, "/debug/decisions?limit=50"))["decisions"]
                return sum(d["requestId"].startswith("filler-") for d in decisions) == capacity

            await eventually(fillers_routed, what="the pool filled")
            batch = [send("batch", i, "batch") for i in range(20)]
            # The batch band takes 6; the other 14 are refused at once, while the pool is full.
            shed = await _first_done(batch, 20 - BATCH_BAND_REQUESTS)
            assert Counter(task.result().status for task in shed) == {429: 20 - BATCH_BAND_REQUESTS}
            assert error_message(next(iter(shed)).result().body).startswith("inference error: ResourceExhausted - ")
            normal = [send("normal", i, None) for i in range(3)]
            interactive = [send("interactive", i, "interactive") for i in range(5)]

            async def all_queued() -> bool:
                return await queue_state() == {100: 5, 0: 3, -1: BATCH_BAND_REQUESTS}

            await eventually(all_queued, what="every waiting request queued in its band")
            assert not any(task.done() for task in [*fillers, *normal, *interactive])
        replies = {name: await asyncio.gather(*tasks)
                   for name, tasks in (("filler", fillers), ("normal", normal), ("interactive", interactive))}
        batch_replies = await asyncio.gather(*batch)
        decisions = (await admin(session, stack, "/debug/decisions?limit=100"))["decisions"]
        snapshot = await admin(session, stack, "/debug/flowcontrol")
        state = await admin(session, stack, "/debug/state")

    assert all(reply.status == 200 for group in replies.values() for reply in group), {
        name: [r.status for r in group] for name, group in replies.items()}
    assert Counter(reply.status for reply in batch_replies) == {200: BATCH_BAND_REQUESTS, 429: 20 - BATCH_BAND_REQUESTS}
    # Once capacity freed, the queue was served by priority: every interactive request
    # before any normal one, every normal one before any waiting batch request.
    dispatched = [d["requestId"].split("-")[0] for d in reversed(decisions)
                  if d["requestId"].startswith(("interactive-", "normal-", "batch-"))]
    assert dispatched == ["interactive"] * 5 + ["normal"] * 3 + ["batch"] * BATCH_BAND_REQUESTS, dispatched
    assert snapshot["queuedRequests"] == 0 and snapshot["queuedBytes"] == 0
    assert state["requestBodyBytesHeld"] == 0


async def test_under_a_flood_of_batch_requests_interactive_ones_keep_completing(tmp_path: Path) -> None:
    # Real overload: one sequence per simulator at real speed, 90 batch requests,
    # and the shipped utilization detector (which counts the picker's own dispatches).
    config = shipped_config(exact_capacity=False, defaultRequestTTL="3s")
    with flow_control_stack(tmp_path, config, ["--max-num-seqs", "1"]) as stack:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            def send(objective: str, i: int) -> asyncio.Task[Reply]:
                return asyncio.create_task(post(session, stack.url, completion(f"{objective} {i}", max_tokens=24),
                                                headers={"x-gateway-inference-objective": objective}))

            # A burst arrives faster than scrapes can show it; once the model servers' queues
            # show the overload, the next wave waits in the picker or is shed.
            flood = [send("batch", i) for i in range(60)]

            async def saturated() -> bool:
                return (await admin(session, stack, "/debug/flowcontrol"))["saturation"] >= 1.0

            await eventually(saturated, what="the pool saturated")
            flood += [send("batch", i) for i in range(60, 90)]

            async def batch_waiting() -> bool:
                snapshot = await admin(session, stack, "/debug/flowcontrol")
                return band_counts(snapshot).get(-1, 0) > 0

            await eventually(batch_waiting, what="batch requests waiting in the picker")
            # One after another, while the flood is still being worked off.
            interactive = [await send("interactive", i) for i in range(6)]
            flood_replies = await asyncio.gather(*flood)

            async def drained() -> bool:
                return (await admin(session, stack, "/debug/flowcontrol"))["queuedRequests"] == 0

            await eventually(drained, what="the queue drained")
            async with session.get(stack.admin_url + "/metrics") as response:
                metrics = await response.text()

    assert [reply.status for reply in interactive] == [200] * 6
    statuses = Counter(reply.status for reply in flood_replies)
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses[429] > 0, statuses  # the batch band (6 places) overflowed
    assert statuses[200] > 0, statuses  # and batch was not starved either
    queue_sizes = [line for line in metrics.splitlines()
                   if line.startswith("inference_extension_flow_control_queue_size{")]
    assert queue_sizes and all(line.endswith(" 0.0") for line in queue_sizes), queue_sizes


async def _first_done(tasks: list[asyncio.Task[Reply]], count: int, timeout: float = 10.0) -> set[asyncio.Task[Reply]]:
    """Wait until ``count`` of ``tasks`` are done (bounded); returns the done ones."""
    deadline = time.monotonic() + timeout
    while True:
        done = {task for task in tasks if task.done()}
        if len(done) >= count:
            return done
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(done)} of {count} requests answered within {timeout}s")
        await asyncio.wait(set(tasks) - done, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
