"""The simulator's KV-cache events on the wire, read with plain pyzmq + msgpack (not the picker's decoder).

Loopback only; ports are picked free; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
import zmq
import zmq.asyncio
from sim_http_helpers import post_json
from tokenizers import Tokenizer as HFTokenizer

from epp.sim import SimConfig, SimServer
from epp.sim.kv_events_config import KVEventsSettings
from epp.sim.tokenizer import Tokenizer
from epp.testing.tokenizers import write_tiny_tokenizer
from epp.tokenization import PromptTokenizer

BLOCK = 16
WAIT = 5.0  # seconds: bound on every wait for a message

Batch = tuple[bytes, int, list[Any]]  # topic, sequence number, decoded payload


def _free_ports(count: int) -> int:
    """A base port such that base .. base+count-1 are free on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free consecutive ports")


def _decode(frames: list[bytes]) -> Batch:
    topic, seq, payload = frames
    assert len(seq) == 8
    return topic, int.from_bytes(seq, "big"), msgpack.unpackb(payload, raw=False)


@pytest.fixture
async def zctx() -> AsyncIterator[zmq.asyncio.Context]:
    ctx = zmq.asyncio.Context()
    yield ctx
    ctx.destroy(linger=0)


async def _subscribe(ctx: zmq.asyncio.Context, endpoint: str, *, bind: bool = False) -> zmq.asyncio.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    if bind:
        sub.bind(endpoint)
    else:
        sub.connect(endpoint)
    return sub


async def _recv(sub: zmq.asyncio.Socket, timeout: float = WAIT) -> Batch:
    frames = await asyncio.wait_for(sub.recv_multipart(), timeout)
    return _decode(frames)


async def _drain(sub: zmq.asyncio.Socket, quiet: float = 0.3) -> list[Batch]:
    """Every batch until none arrives for ``quiet`` seconds (at most 10 000)."""
    out: list[Batch] = []
    for _ in range(10_000):
        try:
            out.append(await _recv(sub, quiet))
        except TimeoutError:
            break
    return out


async def _complete(http: aiohttp.ClientSession, url: str, prompt: Any, max_tokens: int = 1) -> dict[str, Any]:
    status, body = await post_json(http, url + "/v1/completions", {"prompt": prompt, "max_tokens": max_tokens})
    assert status == 200, body
    assert isinstance(body, dict)
    return body


async def _prime(sub: zmq.asyncio.Socket, http: aiohttp.ClientSession, url: str) -> list[Batch]:
    """Send throw-away prompts until the (slow-joining) SUB sees a batch; returns the batches seen."""
    for attempt in range(20):
        await _complete(http, url, [50_000 + attempt] * (2 * BLOCK))
        try:
            first = await _recv(sub, 0.25)
        except TimeoutError:
            continue
        return [first, *await _drain(sub, 0.2)]
    raise AssertionError("no KV event batch reached the subscriber")


async def _replay(ctx: zmq.asyncio.Context, endpoint: str, start: int) -> list[tuple[int, bytes]]:
    """vLLM's replay protocol: ``[seq, payload]`` replies until seq -1.

    A DEALER that writes the REQ envelope (empty delimiter) itself: a REQ socket would accept
    only the first reply of the stream.
    """
    req = ctx.socket(zmq.DEALER)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(endpoint)
    await req.send_multipart([b"", start.to_bytes(8, "big")])
    out: list[tuple[int, bytes]] = []
    try:
        for _ in range(10_000):
            empty, seq_bytes, payload = await asyncio.wait_for(req.recv_multipart(), WAIT)
            assert empty == b""
            seq = int.from_bytes(seq_bytes, "big", signed=True)
            if seq == -1:
                assert payload == b""
                return out
            out.append((seq, payload))
        raise AssertionError("replay did not end")
    finally:
        req.close()


def _events(batches: list[Batch]) -> list[list[Any]]:
    return [event for _, _, payload in batches for event in payload[1]]


async def _server(port: int, **overrides: Any) -> SimServer:
    settings = overrides.pop("kv_events", KVEventsSettings(enable_kv_cache_events=True, publisher="zmq",
                                                           endpoint=f"tcp://127.0.0.1:{port}", bind=True))
    server = SimServer(SimConfig(port=0, time_scale=0.05, block_size=BLOCK, kv_events=settings, **overrides))
    await server.start()
    return server


async def test_stores_evictions_and_clear_reach_a_plain_subscriber(zctx: zmq.asyncio.Context,
                                                                    http: aiohttp.ClientSession) -> None:
    port = _free_ports(2)
    settings = KVEventsSettings(enable_kv_cache_events=True, publisher="zmq", endpoint=f"tcp://127.0.0.1:{port}",
                                replay_endpoint=f"tcp://127.0.0.1:{port + 1}", bind=True)
    server = await _server(0, kv_events=settings, num_gpu_blocks=8, max_model_len=128)
    try:
        assert server.kv_events_endpoint == f"tcp://127.0.0.1:{port}"
        sub = await _subscribe(zctx, server.kv_events_endpoint)
        primed = await _prime(sub, http, server.url)
        # What the slow-joining SUB missed, from the replay socket, as a subscriber would fetch it.
        missed = await _replay(zctx, str(server.kv_replay_endpoint), 0)
        primed = [(b"", seq, msgpack.unpackb(p, raw=False)) for seq, p in missed
                  if seq < primed[0][1]] + primed

        prompt = list(range(1000, 1000 + 2 * BLOCK + 3))  # two full blocks and a partial one
        await _complete(http, server.url, prompt)
        for i in range(6):  # distinct prompts of 3 blocks each: 8 blocks cannot keep them all
            await _complete(http, server.url, [2000 + 100 * i + t for t in range(3 * BLOCK)])
        status, _ = await post_json(http, server.url + "/reset_prefix_cache", {})
        assert status == 200
        batches = await _drain(sub)
        sub.close()
    finally:
        await server.stop()

    batches = primed + batches
    seqs = [seq for _, seq, _ in batches]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # consecutive, nothing lost
    for _, _, payload in batches:
        ts, events, rank = payload
        assert isinstance(ts, float) and rank == 0 and events
    events = _events(batches)
    (first,) = [e for e in events if e[0] == "BlockStored" and e[3][:BLOCK] == prompt[:BLOCK]]
    assert first[2] is None and first[3] == prompt[:2 * BLOCK] and first[4] == BLOCK
    assert first[5:] == [None, "GPU", None]  # lora_id, medium, lora_name
    assert len(first[1]) == 2 and first[1][1] != first[1][0]

    held: set[int] = set()
    seen: set[int] = set()  # a new block's parent may be evicted already, but it was stored once
    for event in events:  # replay the stream: every removal names a block stored before it
        if event[0] == "BlockStored":
            assert event[2] is None or event[2] in seen
            held.update(event[1])
            seen.update(event[1])
        elif event[0] == "BlockRemoved":
            assert event[2] == "GPU" and set(event[1]) <= held
            held.difference_update(event[1])
        else:
            assert event == ["AllBlocksCleared"]
            held.clear()
    assert any(e[0] == "BlockRemoved" for e in events)
    assert events[-1] == ["AllBlocksCleared"]
    assert set(first[1]) & {h for e in events if e[0] == "BlockRemoved" for h in e[1]}  # the prompt was evicted


async def test_text_prompts_without_a_tokenizer_publish_the_simulators_pseudo_tokens(
        zctx: zmq.asyncio.Context, http: aiohttp.ClientSession) -> None:
    server = await _server(_free_ports(1), max_model_len=4096)
    try:
        sub = await _subscribe(zctx, str(server.kv_events_endpoint))
        await _prime(sub, http, server.url)
        text = "The quick brown fox jumps over the lazy dog near the river bank " * 4
        await _complete(http, server.url, text)
        events = _events(await _drain(sub))
        sub.close()
    finally:
        await server.stop()
    ids = Tokenizer().encode(text, add_bos=True)
    (stored,) = [e for e in events if e[0] == "BlockStored"]
    assert stored[3] == ids[:len(ids) // BLOCK * BLOCK]


async def test_replay_socket_returns_missed_batches_then_the_end_marker(zctx: zmq.asyncio.Context,
                                                                         http: aiohttp.ClientSession) -> None:
    base = _free_ports(2)
    settings = KVEventsSettings(enable_kv_cache_events=True, publisher="zmq", endpoint=f"tcp://127.0.0.1:{base}",
                                replay_endpoint=f"tcp://127.0.0.1:{base + 1}", buffer_steps=3, bind=True)
    server = await _server(0, kv_events=settings)
    try:
        assert server.kv_replay_endpoint == f"tcp://127.0.0.1:{base + 1}"
        sub = await _subscribe(zctx, str(server.kv_events_endpoint))
        await _prime(sub, http, server.url)
        for i in range(5):
            await _complete(http, server.url, [3000 + 100 * i + t for t in range(BLOCK)])
        live = await _drain(sub)
        sub.close()
        assert len(live) >= 5
        last = live[-1][1]

        replayed = await _replay(zctx, str(server.kv_replay_endpoint), last - 3)  # only the last 3 are kept
    finally:
        await server.stop()
    assert [seq for seq, _ in replayed] == [last - 2, last - 1, last]
    by_seq = {seq: payload for _, seq, payload in live}
    assert [msgpack.unpackb(p, raw=False) for _, p in replayed] == [by_seq[s] for s, _ in replayed]


async def test_config_endpoint_with_a_host_connects_to_a_bound_subscriber_with_the_replica_topic(
        zctx: zmq.asyncio.Context, http: aiohttp.ClientSession) -> None:
    port = _free_ports(1)
    sub = await _subscribe(zctx, f"tcp://127.0.0.1:{port}", bind=True)
    settings = KVEventsSettings(enable_kv_cache_events=True, publisher="zmq", endpoint=f"tcp://127.0.0.1:{port}",
                                topic="kv@{host}:{port}@{model}", bind=False)
    server = await _server(0, kv_events=settings, model="tiny")
    try:
        await _prime(sub, http, server.url)
        await _complete(http, server.url, list(range(BLOCK)))
        batches = await _drain(sub)
    finally:
        sub.close()
        await server.stop()
    assert {topic for topic, _, _ in batches} == {f"kv@127.0.0.1:{server.port}@tiny".encode()}


async def test_a_tokenizer_trained_here_gives_the_token_ids_seen_in_block_stored(
        tmp_path: Path, zctx: zmq.asyncio.Context, http: aiohttp.ClientSession) -> None:
    sentences = ["the cat sat on the mat", "a dog ran in the park", "the sun is warm today",
                 "birds sing in the tall green trees"]
    path = write_tiny_tokenizer(tmp_path, corpus=sentences, special_tokens=(), bos_token=None, chat_template=None)

    server = await _server(_free_ports(1), tokenizer_path=str(path), max_model_len=1024)
    try:
        sub = await _subscribe(zctx, str(server.kv_events_endpoint))
        await _prime(sub, http, server.url)
        prompt = " ".join(sentences * 3)
        messages = [{"role": "user", "content": " ".join(sentences * 2)}]
        await _complete(http, server.url, prompt)
        status, _ = await post_json(http, server.url + "/v1/chat/completions",
                                    {"messages": messages, "max_tokens": 1})
        assert status == 200
        status, tokenized = await post_json(http, server.url + "/tokenize", {"prompt": prompt})
        assert status == 200
        events = _events(await _drain(sub))
        sub.close()
    finally:
        await server.stop()
    real = PromptTokenizer.from_file(path)
    completion_ids = real.encode_request("completions", {"prompt": prompt})
    chat_ids = real.encode_request("chat_completions", {"messages": messages})
    assert tokenized["tokens"] == completion_ids
    # ids of the tiny vocabulary, not pseudo-tokens
    assert max(completion_ids) < HFTokenizer.from_file(str(path)).get_vocab_size()
    stored = [e for e in events if e[0] == "BlockStored"]
    assert len(stored) == 2
    assert stored[0][3] == completion_ids[:len(completion_ids) // BLOCK * BLOCK]
    assert stored[1][3] == chat_ids[:len(chat_ids) // BLOCK * BLOCK]


def test_cli_replicas_publish_on_consecutive_ports(tmp_path: Path) -> None:
    base = _free_ports(2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "epp.sim", "--port", "0", "--replicas", "2", "--time-scale", "0.05",
         "--kv-events", f"tcp://127.0.0.1:{base}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while sum(line.startswith("epp-sim ready") for line in lines) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        kv_lines = [line.split() for line in lines if line.startswith("epp-sim kv-events")]
        assert [(parts[2].startswith("http://127.0.0.1:"), parts[3]) for parts in kv_lines] == [
            (True, f"pub=tcp://127.0.0.1:{base}"), (True, f"pub=tcp://127.0.0.1:{base + 1}")]
        urls = [parts[2] for parts in kv_lines]
        seen = asyncio.run(_one_request_per_replica(urls, [f"tcp://127.0.0.1:{base + i}" for i in range(2)]))
        assert seen == [[list(range(i * 100, i * 100 + BLOCK))] for i in range(2)]
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # also closes the pipes


async def _one_request_per_replica(urls: list[str], endpoints: list[str]) -> list[list[list[int]]]:
    """Per replica, the token ids of every block it reported storing for one request sent to it."""
    ctx = zmq.asyncio.Context()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            subs = [await _subscribe(ctx, e) for e in endpoints]
            for sub, url in zip(subs, urls, strict=True):
                await _prime(sub, http, url)
            for i, url in enumerate(urls):
                await _complete(http, url, list(range(i * 100, i * 100 + BLOCK)))
            out = []
            for sub in subs:
                out.append([e[3] for e in _events(await _drain(sub)) if e[0] == "BlockStored"])
                sub.close()
            return out
    finally:
        ctx.destroy(linger=0)
