"""Two in-process picker replicas sharing prefix and load state through a real Redis.

Each replica is what a picker process holds: a prefix producer and an in-flight producer
built by the registry, and the ``SharedState`` the server would run. "Routing" a request
runs the producers' PrepareData and PreRequest as the director does, so what a replica
sees is exactly what its scorers would read.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import pytest

from epp.datalayer.endpoint import Endpoint, EndpointMetadata
from epp.datalayer.pool import EndpointPool
from epp.framework.attributes import inflight_load, prefix_match
from epp.framework.plugin import Handle
from epp.framework.requestcontrol import ResponseInfo
from epp.framework.scheduling import CycleState, ProfileRunResult, SchedulingResult
from epp.plugins import default_registry
from epp.plugins.inflight.producer import InFlightLoadProducer
from epp.plugins.prefix.producer import ApproxPrefixCacheProducer
from epp.requests.types import ApiKind, InferenceRequest
from epp.sharedstate import SharedState, SharedStateSettings, build_shared_state
from epp.testing.waiting import eventually

if TYPE_CHECKING:
    from tests.integration.sharedstate.conftest import RedisProcess

FAST = SharedStateSettings(flush_interval=0.01, load_period=0.05, load_ttl=0.5, ratio_period=0.05, timeout=0.5,
                           block=0.1, backoff_max=0.2)
# Load that outlives any test: only a graceful stop or a restart's first round removes it.
LONG_TTL = SharedStateSettings(flush_interval=0.01, load_period=0.05, load_ttl=60.0, timeout=0.5, block=0.1)
WAIT = 10.0
ENDPOINTS = [Endpoint(EndpointMetadata(name, "127.0.0.1", port, port, MappingProxyType({})))
             for name, port in (("e1", 9001), ("e2", 9002))]
E1, E2 = ENDPOINTS


def _request(prompt: bytes, n: int = 0) -> InferenceRequest:
    return InferenceRequest(request_id=f"r{n}", api=ApiKind.COMPLETIONS, path="/v1/completions", model="m",
                            target_model="m", body={"model": "m", "prompt": prompt.decode()}, raw_body=b"{}",
                            stream=False, headers={}, cache_salt="", prompt=prompt)


@dataclass
class Replica:
    prefix: ApproxPrefixCacheProducer
    inflight: InFlightLoadProducer
    shared: SharedState
    task: asyncio.Task[None] | None = None

    async def route(self, prompt: bytes, endpoint: Endpoint) -> InferenceRequest:
        request, cycle = _request(prompt), CycleState()
        await self.prefix.prepare_data(cycle, request, ENDPOINTS)
        await self.inflight.prepare_data(cycle, request, ENDPOINTS)
        result = SchedulingResult(profile_results={"default": ProfileRunResult([endpoint])}, primary_profile="default")
        self.prefix.pre_request(cycle, request, result)
        self.inflight.pre_request(cycle, request, result)
        return request

    def finish(self, request: InferenceRequest, endpoint: Endpoint) -> None:
        self.inflight.response_complete(request, ResponseInfo(endpoint=endpoint, completed=True))

    async def matched(self, prompt: bytes) -> dict[str, int]:
        cycle = CycleState()
        await self.prefix.prepare_data(cycle, _request(prompt), ENDPOINTS)
        return dict(prefix_match(cycle).matches)

    async def requests_seen(self, endpoint: Endpoint) -> int:
        cycle = CycleState()
        await self.inflight.prepare_data(cycle, _request(b"x"), ENDPOINTS)
        return inflight_load(cycle).requests(endpoint.name)

    async def sees(self, endpoint: Endpoint, requests: int) -> bool:
        return await self.requests_seen(endpoint) == requests

    def start(self) -> None:
        self.task = asyncio.create_task(self.shared.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        await self.shared.aclose()


Factory = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def replica(redis: RedisProcess) -> AsyncIterator[Factory]:
    started: list[Replica] = []

    async def build(replica_id: str, settings: SharedStateSettings = FAST) -> Replica:
        registry = default_registry()
        handle = Handle(pool=EndpointPool(), rng=random.Random(1))
        prefix = registry.create("approx-prefix-cache-producer", "prefix", {"autoTune": False}, handle, "p[0]")
        inflight = registry.create("inflight-load-producer", "inflight", None, handle, "p[1]")
        shared = build_shared_state(redis.url, "pool-a", replica_id, [prefix, inflight], settings)
        built = Replica(prefix, inflight, shared)  # type: ignore[arg-type]
        built.start()
        started.append(built)
        return built

    yield build
    for built in started:
        await built.stop()


PROMPT = b"You are a helpful assistant. " * 20  # 580 bytes: 9 blocks of 64 bytes


async def test_a_prefix_routed_by_one_replica_is_matched_by_the_other(replica: Factory) -> None:
    a, b = await replica("a"), await replica("b")
    assert await b.matched(PROMPT) == {}
    await a.route(PROMPT, E2)

    async def b_matches() -> bool:
        return await b.matched(PROMPT) == {"e2": 10}

    await eventually(b_matches, WAIT, "replica b matches the prefix a routed")
    assert a.shared.snapshot()["prefix"]["recordsSent"] == 1
    assert b.shared.snapshot()["prefix"]["recordsApplied"] == 1
    # b applied it without publishing it again: a never gets its own record back
    assert a.shared.snapshot()["prefix"]["recordsApplied"] == 0


async def test_a_new_replica_warms_up_from_the_recent_stream(replica: Factory) -> None:
    a = await replica("a")
    await a.route(PROMPT, E1)
    await eventually(lambda: a.shared.snapshot()["prefix"]["recordsSent"] == 1, WAIT, "a published")
    late = await replica("late")

    async def late_matches() -> bool:
        return await late.matched(PROMPT) == {"e1": 10}

    await eventually(late_matches, WAIT, "a replica started later learns the earlier prefix")


async def test_each_replica_sees_the_others_in_flight_load(replica: Factory) -> None:
    a, b = await replica("a"), await replica("b")
    first = await a.route(b"q" * 100, E1)
    await a.route(b"q" * 100, E1)
    await b.route(b"q" * 100, E1)

    await eventually(lambda: b.sees(E1, 3), WAIT, "b sees its own request plus a's two")
    await eventually(lambda: a.sees(E1, 3), WAIT, "a sees its own two plus b's one")
    assert await b.requests_seen(E2) == 0
    a.finish(first, E1)
    await eventually(lambda: b.sees(E1, 2), WAIT, "a's finished request leaves b's view")
    # Peers are listed from the rounds' heartbeats, which may come after the pushes.
    await eventually(lambda: set(b.shared.snapshot()["peers"]) == {"a"}, WAIT, "b lists a as its peer")


async def test_a_dead_replicas_load_expires(replica: Factory) -> None:
    a, b = await replica("a"), await replica("b")
    await a.route(b"q" * 100, E1)

    await eventually(lambda: b.sees(E1, 1), WAIT, "b sees a's request")
    a.shared.remove_on_stop = False  # a crash: nothing is cleaned up
    await a.stop()
    await eventually(lambda: b.sees(E1, 0), WAIT, "a's load is gone after its TTL")
    assert b.shared.snapshot()["peers"] == {}


async def test_a_graceful_stop_removes_the_load_before_the_ttl(replica: Factory) -> None:
    a, b = await replica("a", LONG_TTL), await replica("b", LONG_TTL)
    await a.route(b"q" * 100, E1)

    await eventually(lambda: b.sees(E1, 1), WAIT, "b sees a's request")
    await a.stop()
    await eventually(lambda: b.sees(E1, 0), WAIT, "a's load is removed at once, not after 60 s")


async def test_store_outage_degrades_to_local_state_and_recovery_resumes_sharing(
        replica: Factory, redis: RedisProcess) -> None:
    a, b = await replica("a"), await replica("b")
    await a.route(b"q" * 100, E1)

    await eventually(lambda: b.sees(E1, 1), WAIT, "b sees a's request")
    await eventually(lambda: a.shared.healthy()[0] and b.shared.healthy()[0], WAIT, "both connected")

    redis.kill()
    await eventually(lambda: not a.shared.healthy()[0] and not b.shared.healthy()[0], WAIT, "both degraded")
    assert "unreachable" in b.shared.healthy()[1]
    # Routing goes on with local state: records and matches are local, nothing waits on the store.
    other = b"A different system prompt entirely. " * 20
    await a.route(other, E2)
    assert await a.matched(other) == {"e2": 12}
    await b.route(b"q" * 100, E1)
    await eventually(lambda: b.sees(E1, 1), WAIT, "b drops a's stale load and counts only its own")
    assert a.shared.snapshot()["connected"] is False

    redis.start()
    await eventually(lambda: a.shared.healthy()[0] and b.shared.healthy()[0], WAIT, "both reconnected")
    await eventually(lambda: b.sees(E1, 2), WAIT, "b sees a's load again")
    after = b"Routed after the store came back. " * 20
    await a.route(after, E1)

    async def b_matches() -> bool:
        return await b.matched(after) == {"e1": 11}

    await eventually(b_matches, WAIT, "prefix replication resumed")


async def test_garbage_in_the_store_is_skipped_and_counted(replica: Factory, redis: RedisProcess) -> None:
    from redis.asyncio import Redis

    b = await replica("b")
    client = Redis(host="127.0.0.1", port=redis.port)
    try:
        await client.hset("epp:pool-a:load:evil", mapping={"_hb": "x", "inflight\te1": "1 2", "nonsense": "1 1 1",
                                                           "inflight\te2": "2 20 5"})
        await client.zadd("epp:pool-a:replicas", {"evil": 1e15})
        await client.xadd("epp:pool-a:prefix", {"r": "evil", "v": b"\x01\x01prefix\x00"})


        await eventually(lambda: b.sees(E2, 2), WAIT, "the well-formed field is used")
        await eventually(lambda: b.shared.snapshot()["prefix"]["badEntries"] == 1, WAIT, "the bad entry counted")
        assert b.shared.snapshot()["load"]["badFields"] >= 2
        assert await b.requests_seen(E1) == 0
        assert b.shared.healthy()[0]
    finally:
        await client.aclose()


# Rounds every 30 s: after the first one, whatever the other replica sees came by push.
SLOW_ROUNDS = SharedStateSettings(flush_interval=0.01, load_period=30.0, load_ttl=60.0, timeout=0.5, block=0.1,
                                  backoff_max=0.2)


async def test_a_routed_request_reaches_the_other_replica_by_push_long_before_the_next_round(
        replica: Factory) -> None:
    a, b = await replica("a", SLOW_ROUNDS), await replica("b", SLOW_ROUNDS)
    await eventually(lambda: a.shared.load.counters.rounds == 1 and b.shared.load.counters.rounds == 1, WAIT,
                     "each replica made its first round")
    await eventually(lambda: b.shared.snapshot()["connected"], WAIT, "b connected")
    # The subscription may start after the first push: route until b has heard one.
    requests = []
    for _ in range(20):
        requests.append(await a.route(b"q" * 400, E2))
        if await b.requests_seen(E2) > 0:
            break
        await asyncio.sleep(0.1)

    await eventually(lambda: b.sees(E2, len(requests)), WAIT, "b sees every request a routed")
    assert a.shared.load.counters.rounds == 1, "no round ran: the load came by push"
    for request in requests:
        a.finish(request, E2)
    await eventually(lambda: b.sees(E2, 0), WAIT, "a's finished requests leave b's view by push too")
    assert b.shared.snapshot()["load"]["pushesApplied"] >= 2
    assert a.shared.load.counters.rounds == 1


async def test_pushes_off_leave_the_load_to_the_rounds(replica: Factory) -> None:
    rounds_only = SharedStateSettings(flush_interval=0.01, load_period=0.05, load_ttl=0.5, timeout=0.5, block=0.1,
                                      backoff_max=0.2, load_push=False)
    a, b = await replica("a", rounds_only), await replica("b", rounds_only)
    await a.route(b"q" * 100, E1)

    await eventually(lambda: b.sees(E1, 1), WAIT, "b sees a's request through the rounds")
    assert a.shared.snapshot()["load"]["pushes"] == 0


async def test_a_replica_restarted_under_the_same_id_does_not_inherit_the_dead_ones_load(replica: Factory) -> None:
    # A long TTL: only the restarted replica's first round can clear the dead one's fields.
    a, b = await replica("a", LONG_TTL), await replica("b", LONG_TTL)
    await a.route(b"q" * 100, E1)

    await eventually(lambda: b.sees(E1, 1), WAIT, "b sees a's request")
    a.shared.remove_on_stop = False  # a crash with a request in flight: its key outlives it
    await a.stop()
    await replica("a", LONG_TTL)  # restarted under the same id within the dead one's TTL, nothing in flight
    await eventually(lambda: b.sees(E1, 0), WAIT, "the dead replica's request is not carried over")


async def test_replicas_agree_on_characters_per_token_so_their_records_match(replica: Factory) -> None:
    # Each replica learns from its own responses: left alone, two replicas settle on slightly
    # different values, hash blocks of different lengths, and share nothing useful.
    a, b = await replica("a"), await replica("b")
    for _ in range(8):
        a.prefix.token_ratios.observe("m", 2000, 1000)  # a's responses: 2 characters per token
    for _ in range(8):
        b.prefix.token_ratios.observe("m", 2100, 1000)  # b's: 2.1, adopted too, but a spoke first
    assert a.prefix.token_ratios.chars_per_token("m") == 2.0

    async def agreed() -> bool:
        return a.prefix.token_ratios.chars_per_token("m") == b.prefix.token_ratios.chars_per_token("m")

    await eventually(agreed, WAIT, "both replicas use one value")
    await a.route(PROMPT, E1)

    async def b_matches() -> bool:
        return (await b.matched(PROMPT)).get("e1", 0) > 0

    await eventually(b_matches, WAIT, "b matches what a routed after the change")
    assert a.shared.snapshot()["prefix"]["blockSizeMismatches"] == 0
    assert b.shared.snapshot()["prefix"]["blockSizeMismatches"] == 0
