"""KVEventsSubscriber against real ZeroMQ sockets on loopback: a test PUB plays vLLM's publisher."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio

from epp.datalayer.endpoint import EndpointMetadata
from epp.datalayer.pool import EndpointPool
from epp.plugins.kvcache.index import KVBlockIndex
from epp.plugins.kvcache.keys import block_keys
from epp.plugins.kvcache.subscriber import ENDPOINT_LABEL, REPLAY_LABEL, KVEventsSubscriber, endpoint_id_from_topic
from epp.testing.waiting import eventually

BS = 4
PROMPT = list(range(500, 532))
KEYS = block_keys(PROMPT, BS)


def stored(first: int, count: int, parent: int | None) -> list[Any]:
    """vLLM 0.10's positional BlockStored of blocks ``first``.. of PROMPT; engine hash = position + 1."""
    return ["BlockStored", list(range(first + 1, first + count + 1)), parent,
            PROMPT[first * BS:(first + count) * BS], BS, None, "GPU"]


@dataclass
class Publisher:
    """vLLM's ZmqEventPublisher in miniature: PUB + a replay buffer served on a ROUTER."""

    context: zmq.asyncio.Context
    topic: bytes = b""
    pub: zmq.asyncio.Socket = field(init=False)
    address: str = ""
    seq: int = 0
    buffer: list[tuple[int, bytes]] = field(default_factory=list)

    def bind(self) -> Publisher:
        self.pub = self.context.socket(zmq.PUB)
        self.pub.bind("tcp://127.0.0.1:*")
        self.address = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        return self

    def connect(self, address: str) -> Publisher:
        self.pub = self.context.socket(zmq.PUB)
        self.pub.connect(address)
        return self

    async def send(self, *events: Any, deliver: bool = True, rank: int | None = 0) -> int:
        """Publish one batch; ``deliver=False`` numbers and buffers it but never sends it (a lost message)."""
        seq = self.seq
        self.seq += 1
        payload = msgpack.packb([1.0, list(events), rank])
        self.buffer.append((seq, payload))
        if deliver:
            await self.pub.send_multipart([self.topic, seq.to_bytes(8, "big"), payload])
        return seq

    async def send_raw(self, frames: list[bytes]) -> None:
        await self.pub.send_multipart(frames)


async def serve_replay(router: zmq.asyncio.Socket, publisher: Publisher, requests: list[int]) -> None:
    for _ in range(10):  # bounded: each test asks a few times at most
        identity, _, start = await router.recv_multipart()
        requests.append(int.from_bytes(start, "big"))
        for seq, payload in publisher.buffer:
            if seq >= requests[-1]:
                await router.send_multipart([identity, b"", seq.to_bytes(8, "big"), payload])
        await router.send_multipart([identity, b"", (-1).to_bytes(8, "big", signed=True), b""])


def member(name: str, labels: Mapping[str, str] | None = None, port: int = 8000) -> EndpointMetadata:
    return EndpointMetadata(name, "127.0.0.1", port, port, MappingProxyType(dict(labels or {})))


class ClosingContext(zmq.asyncio.Context):
    """Remembers every socket so the test closes them all (an unclosed socket warns when collected)."""

    opened: list[zmq.asyncio.Socket]

    def socket(self, *args: Any, **kwargs: Any) -> zmq.asyncio.Socket:
        sock: zmq.asyncio.Socket = super().socket(*args, **kwargs)
        sock.setsockopt(zmq.LINGER, 0)
        self.opened.append(sock)
        return sock


@pytest.fixture
async def context() -> AsyncIterator[zmq.asyncio.Context]:
    ctx = ClosingContext()
    ctx.opened = []
    yield ctx
    for sock in ctx.opened:
        sock.close(linger=0)
    ctx.term()


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def start_replay(context: zmq.asyncio.Context, publisher: Publisher) -> tuple[str, list[int], asyncio.Task[None]]:
    """A replay socket serving ``publisher``'s buffer: its address, the start sequences asked, its task."""
    router = context.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")
    requests: list[int] = []
    return router.getsockopt_string(zmq.LAST_ENDPOINT), requests, asyncio.create_task(
        serve_replay(router, publisher, requests))


def following(labels: dict[str, str], **options: Any) -> tuple[KVBlockIndex, KVEventsSubscriber]:
    """A subscriber (and its index) following a pool of one endpoint ``a`` with ``labels``."""
    index = KVBlockIndex()
    pool = EndpointPool()
    pool.replace_all([member("a", labels)])
    subscriber = KVEventsSubscriber(index, **options)
    subscriber.attach(pool)
    return index, subscriber


@contextlib.asynccontextmanager
async def running(subscriber: KVEventsSubscriber) -> AsyncIterator[KVEventsSubscriber]:
    task = asyncio.create_task(subscriber.run())
    try:
        yield subscriber
    finally:
        await stop(task)
        subscriber.close()


async def bind_when_free(sock: zmq.asyncio.Socket, address: str) -> None:
    """ZeroMQ releases a closed socket's port on its I/O thread, a moment later."""
    for _ in range(100):
        try:
            sock.bind(address)
            return
        except zmq.ZMQError:
            await asyncio.sleep(0.02)
    raise AssertionError(f"{address} still in use after 2 s")


async def joined(publisher: Publisher, index: KVBlockIndex, name: str) -> None:
    """Publish harmless batches until one arrives (a SUB misses what is sent before it joins)."""
    async def arrived() -> bool:
        if index.last_sequence(name) is not None:
            return True
        await publisher.send(["AllBlocksCleared"])
        return False
    await eventually(arrived, timeout=5.0, what=f"{name} subscribed", interval=0.02)


async def test_connect_mode_follows_the_pool_and_purges_an_endpoint_that_leaves(
        context: zmq.asyncio.Context) -> None:
    publisher = Publisher(context).bind()
    port = int(publisher.address.rsplit(":", 1)[1])
    index = KVBlockIndex()
    pool = EndpointPool()
    subscriber = KVEventsSubscriber(index, endpoint_template="tcp://{address}:" + str(port))
    subscriber.attach(pool)
    async with running(subscriber):
        pool.replace_all([member("a")])  # joins while running
        await joined(publisher, index, "a")
        await publisher.send(stored(0, 3, None))
        await publisher.send(stored(3, 2, 3))
        await eventually(lambda: index.match(KEYS, ["a"]) == {"a": 5}, what="five blocks indexed")
        assert index.stats("a")["gaps"] == 0
        pool.replace_all([])
        assert index.match(KEYS, ["a"]) == {"a": 0}
        assert index.stats("a")["blocks"] == 0
        assert subscriber.stats()["connections"] == 0


async def test_bind_mode_finds_the_endpoint_from_an_llm_d_topic(context: zmq.asyncio.Context) -> None:
    index = KVBlockIndex()
    pool = EndpointPool()
    pool.replace_all([member("pod-a"), member("pod-b", port=8001)])
    subscriber = KVEventsSubscriber(index, mode="bind", bind_address="tcp://127.0.0.1:*", topic="kv@",
                                    topic_map={"kv@b-alias@m": "pod-b"})
    subscriber.attach(pool)
    assert subscriber.bound_address is not None
    a = Publisher(context, topic=b"kv@127.0.0.1:8000@model/x").connect(subscriber.bound_address)
    b = Publisher(context, topic=b"kv@b-alias@m").connect(subscriber.bound_address)
    stranger = Publisher(context, topic=b"kv@10.9.9.9@model").connect(subscriber.bound_address)
    other_topic = Publisher(context, topic=b"metrics").connect(subscriber.bound_address)
    async with running(subscriber):
        await joined(a, index, "pod-a")
        await joined(b, index, "pod-b")
        await a.send(stored(0, 2, None))
        await b.send(stored(0, 1, None))
        await eventually(lambda: index.match(KEYS, ["pod-a", "pod-b"]) == {"pod-a": 2, "pod-b": 1},
                         what="both publishers indexed")

        async def stranger_counted() -> bool:
            await stranger.send(stored(0, 1, None))
            await other_topic.send(stored(0, 1, None))  # filtered out by the subscription prefix
            return subscriber.unknown_topics > 0
        await eventually(stranger_counted, what="unknown topic counted", interval=0.02)
        assert index.debug_sizes()["endpoints"] == 2


async def test_gap_without_replay_clears_the_endpoint_and_counts_it(context: zmq.asyncio.Context) -> None:
    publisher = Publisher(context).bind()
    index, subscriber = following({ENDPOINT_LABEL: publisher.address})
    async with running(subscriber):
        await joined(publisher, index, "a")
        await publisher.send(stored(0, 3, None))
        await publisher.send(["BlockRemoved", [1], "GPU"], deliver=False)  # lost: index would go stale
        last = await publisher.send(stored(3, 1, 3))
        await eventually(lambda: index.last_sequence("a") == last, what="batch after the gap applied")
        assert index.stats("a")["gaps"] == 1
        # Cleared, then the batch after the gap applied: its parent is unknown, so nothing is claimed.
        assert index.match(KEYS, ["a"]) == {"a": 0}
        assert index.stats("a")["unknownParents"] == 1


async def test_gap_with_replay_recovers_the_missing_batches(context: zmq.asyncio.Context) -> None:
    publisher = Publisher(context).bind()
    replay_address, requests, server = start_replay(context, publisher)
    index, subscriber = following({ENDPOINT_LABEL: publisher.address, REPLAY_LABEL: replay_address})
    try:
        async with running(subscriber):
            await joined(publisher, index, "a")
            await publisher.send(stored(0, 2, None))
            missing = await publisher.send(stored(2, 2, 2), deliver=False)
            await publisher.send(stored(4, 1, 4), deliver=False)
            last = await publisher.send(stored(5, 1, 5))
            await eventually(lambda: index.last_sequence("a") == last, what="batch after the gap applied")
            assert requests == [missing]
            assert index.match(KEYS, ["a"]) == {"a": 6}
            assert index.stats("a")["gaps"] == 1
    finally:
        await stop(server)


async def test_replay_that_cannot_reach_back_far_enough_falls_back_to_clearing(
        context: zmq.asyncio.Context) -> None:
    publisher = Publisher(context).bind()
    replay_address, requests, server = start_replay(context, publisher)
    index, subscriber = following({ENDPOINT_LABEL: publisher.address}, replay_template=replay_address)
    try:
        async with running(subscriber):
            await joined(publisher, index, "a")
            await publisher.send(stored(0, 2, None))
            await publisher.send(["BlockRemoved", [1], "GPU"], deliver=False)
            publisher.buffer.clear()  # the publisher's replay buffer rolled over
            last = await publisher.send(["AllBlocksCleared"])
            await eventually(lambda: index.last_sequence("a") == last, what="batch after the gap applied")
            assert len(requests) == 1
            assert index.stats("a")["gaps"] == 1
            assert index.match(KEYS, ["a"]) == {"a": 0}
    finally:
        await stop(server)


async def test_publisher_restart_resets_sequence_and_clears(context: zmq.asyncio.Context) -> None:
    publisher = Publisher(context).bind()
    index, subscriber = following({ENDPOINT_LABEL: publisher.address})
    async with running(subscriber):
        await joined(publisher, index, "a")
        await publisher.send(stored(0, 3, None))
        await eventually(lambda: index.match(KEYS, ["a"]) == {"a": 3}, what="three blocks")
        publisher.seq = 0  # a new process numbers from 0 again
        await publisher.send(stored(0, 1, None))
        await eventually(lambda: index.stats("a")["resets"] == 1, what="reset seen")
        assert index.match(KEYS, ["a"]) == {"a": 1}
        assert index.stats("a")["gaps"] == 0


async def test_malformed_messages_are_counted_and_the_subscriber_keeps_going(
        context: zmq.asyncio.Context) -> None:
    publisher = Publisher(context).bind()
    index, subscriber = following({ENDPOINT_LABEL: publisher.address})
    async with running(subscriber):
        await joined(publisher, index, "a")
        await publisher.send(stored(0, 2, None))
        await publisher.send_raw([b"", b"\x00" * 8])  # two frames
        await publisher.send_raw([b"", (99).to_bytes(8, "big"), b"\xc1\xc1"])  # not msgpack
        await publisher.send_raw([b"", (99).to_bytes(8, "big"), msgpack.packb([1.0, [["Surprise", 1]], 0])])
        await eventually(lambda: subscriber.stats()["errors"] == 2, what="two errors counted")
        # A malformed message may have carried removals: the endpoint starts over.
        assert index.stats("a")["errors"] == 2
        await publisher.send(stored(0, 1, None))
        await eventually(lambda: index.match(KEYS, ["a"]) == {"a": 1}, what="later batches still applied")


async def test_bind_mode_keeps_one_sequence_per_data_parallel_rank(context: zmq.asyncio.Context) -> None:
    """vLLM runs one publisher per DP rank, each numbering from 0, all under the endpoint's topic."""
    index, subscriber = following({}, mode="bind", bind_address="tcp://127.0.0.1:*")
    assert subscriber.bound_address is not None
    topic = b"kv@a@model"
    rank0 = Publisher(context, topic=topic).connect(subscriber.bound_address)
    rank1 = Publisher(context, topic=topic).connect(subscriber.bound_address)
    async with running(subscriber):
        await joined(rank0, index, "a")

        async def rank1_joined() -> bool:
            await rank1.send(["BlockStored", [900], None, [9, 9, 9, 9], BS, None, "GPU"], rank=1)
            return 1 in index.stats("a")["ranks"]
        await eventually(rank1_joined, what="rank 1 subscribed", interval=0.02)
        await rank0.send(stored(0, 2, None), rank=0)
        await rank1.send(stored(0, 4, None), rank=1)
        await rank1.send(["BlockRemoved", [4], "GPU"], rank=1)
        await eventually(lambda: index.match(KEYS, ["a"]) == {"a": 3}, what="rank 1's three blocks")
        assert index.stats("a")["ranks"] == [0, 1]
        assert index.stats("a")["resets"] == 0
        assert index.stats("a")["gaps"] == 0


async def test_publisher_restart_after_a_disconnect_is_a_reset_never_replayed(
        context: zmq.asyncio.Context) -> None:
    first = Publisher(context).bind()
    replay_address, requests, server = start_replay(context, first)
    index, subscriber = following({ENDPOINT_LABEL: first.address, REPLAY_LABEL: replay_address})
    try:
        async with running(subscriber):
            await joined(first, index, "a")
            await first.send(stored(0, 3, None))
            await eventually(lambda: index.match(KEYS, ["a"]) == {"a": 3}, what="three blocks")
            last = index.last_sequence("a")
            assert last is not None
            first.pub.close(linger=0)
            # The new process numbers from 0 and is already past our last sequence when we reconnect.
            second = Publisher(context, seq=last + 5)
            second.pub = context.socket(zmq.PUB)
            await bind_when_free(second.pub, first.address)

            async def reconnected() -> bool:
                await second.send(stored(0, 1, None))
                return bool(index.stats("a")["resets"] == 1)
            await eventually(reconnected, what="restart seen as a reset", interval=0.05)
            await eventually(lambda: index.match(KEYS, ["a"]) == {"a": 1}, what="only the new process's block")
            assert requests == []
            assert index.stats("a")["gaps"] == 0
    finally:
        await stop(server)


def test_addresses_from_template_label_and_data_parallel_rank() -> None:
    subscriber = KVEventsSubscriber(KVBlockIndex(), endpoint_template="tcp://{address}:5557",
                                    replay_template="tcp://{address}:5558")
    try:
        pool = EndpointPool()
        pool.replace_all([member("a"), EndpointMetadata("v6", "fd00::1", 8000, 8000),
                          member("b", {ENDPOINT_LABEL: "tcp://events.b:6000", REPLAY_LABEL: "tcp://events.b:6001"})])
        a, v6, b = (pool.get(n) for n in ("a", "v6", "b"))
        assert a is not None and v6 is not None and b is not None
        assert subscriber.publisher_address(a) == "tcp://127.0.0.1:5557"
        assert subscriber.publisher_address(v6) == "tcp://[fd00::1]:5557"
        assert subscriber.publisher_address(b) == "tcp://events.b:6000"
        assert subscriber.replay_address(a) == "tcp://127.0.0.1:5558"
        assert subscriber.replay_address(a, rank=2) == "tcp://127.0.0.1:5560"  # vLLM offsets ports by DP rank
        assert subscriber.replay_address(b) == "tcp://events.b:6001"
    finally:
        subscriber.close()
    without_replay = KVEventsSubscriber(KVBlockIndex())
    try:
        assert without_replay.replay_address(a) is None
    finally:
        without_replay.close()


@pytest.mark.parametrize(("topic", "expected"), [
    ("kv@10.0.0.1:8000@meta-llama/Llama-3.1-8B", "10.0.0.1:8000"),
    ("kv@pod-a@model", "pod-a"),
    ("kv-events", "kv-events"),  # vLLM's example topic: the topic itself is the id
    ("kv@a@b@c", "kv@a@b@c"),  # as llm-d: exactly three parts or the whole topic
])
def test_endpoint_id_from_an_llm_d_topic(topic: str, expected: str) -> None:
    assert endpoint_id_from_topic(topic) == expected


def test_bind_mode_needs_an_address() -> None:
    with pytest.raises(ValueError, match="bind_address"):
        KVEventsSubscriber(KVBlockIndex(), mode="bind")


async def test_bind_mode_ignores_an_address_shared_by_two_members(context: zmq.asyncio.Context) -> None:
    index = KVBlockIndex()
    pool = EndpointPool()
    pool.replace_all([member("a", port=8000), member("b", port=8001)])  # both on 127.0.0.1
    subscriber = KVEventsSubscriber(index, mode="bind", bind_address="tcp://127.0.0.1:*")
    subscriber.attach(pool)
    assert subscriber.bound_address is not None
    ambiguous = Publisher(context, topic=b"kv@127.0.0.1@m").connect(subscriber.bound_address)
    exact = Publisher(context, topic=b"kv@127.0.0.1:8001@m").connect(subscriber.bound_address)
    async with running(subscriber):
        await joined(exact, index, "b")

        async def ambiguous_dropped() -> bool:
            await ambiguous.send(stored(0, 1, None))
            return subscriber.unknown_topics > 0
        await eventually(ambiguous_dropped, what="ambiguous topic dropped", interval=0.02)
        assert index.stats("a")["blocks"] == 0
        pool.replace_all([member("a", port=8000)])  # b leaves: the address names a alone now
        await ambiguous.send(stored(0, 1, None))
        await eventually(lambda: index.stats("a")["blocks"] == 1, what="address now resolves to a")


def test_bad_templates_are_refused_and_a_bad_label_address_only_skips_that_endpoint() -> None:
    with pytest.raises(ValueError, match="host"):
        KVEventsSubscriber(KVBlockIndex(), endpoint_template="tcp://{host}:5557")
    subscriber = KVEventsSubscriber(KVBlockIndex())
    try:
        pool = EndpointPool()
        subscriber.attach(pool)
        pool.replace_all([member("bad", {ENDPOINT_LABEL: "not a url"}), member("good", port=8001)])
        assert subscriber.stats()["connections"] == 1
        assert subscriber.errors == 1
    finally:
        subscriber.close()
