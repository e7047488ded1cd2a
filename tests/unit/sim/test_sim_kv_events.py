"""KV events recorded by the simulator's KV cache and scheduler, their wire layout and the flags."""

from __future__ import annotations

import argparse
import random

import msgpack
import pytest

from epp.errors import ConfigError
from epp.sim.cli import add_parser, configs_from_args
from epp.sim.kv_cache import KVCache, chain_seed
from epp.sim.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventLog, encode_batch
from epp.sim.kv_events_config import KVEventsSettings, offset_port, parse_kv_events
from epp.sim.lora import LoraManager
from epp.sim.request import RequestStatus, SimRequest
from epp.sim.scheduler import Scheduler

BLOCK = 4


def _request(tokens: list[int], *, lora: str | None = None, lora_id: int | None = None) -> SimRequest:
    return SimRequest(request_id="r", token_ids=list(tokens), num_prompt=len(tokens), max_tokens=4, lora=lora,
                      hash_seed=chain_seed(lora, None), arrival=0.0, rng=random.Random(0), lora_id=lora_id)


def _scheduler(num_blocks: int) -> tuple[Scheduler, KVCache]:
    kv = KVCache(num_blocks, BLOCK)
    kv.events = KVEventLog(BLOCK)
    lora = LoraManager((), max_loras=1, load_time=0.0)
    return Scheduler(max_num_seqs=8, max_num_batched_tokens=1000, kv=kv, lora=lora), kv


def _run_to_completion(scheduler: Scheduler, req: SimRequest) -> None:
    scheduler.add(req)
    plan = scheduler.schedule(0.0)
    for r, n in plan.scheduled:
        scheduler.complete(r, n)
    scheduler.finish(req)
    req.status = RequestStatus.FINISHED


def test_prefilled_full_blocks_are_stored_in_one_event_with_their_tokens_and_chain() -> None:
    scheduler, kv = _scheduler(16)
    req = _request(list(range(100, 110)))  # two full blocks and a partial one
    _run_to_completion(scheduler, req)
    assert kv.events is not None
    events = kv.events.drain()
    hashes = req.full_block_hashes(BLOCK)
    assert events == [BlockStored(block_hashes=hashes[:2], parent_block_hash=None,
                                  token_ids=list(range(100, 108)), block_size=BLOCK, lora_id=None, lora_name=None)]


def test_a_request_extending_a_cached_prefix_reports_only_new_blocks_with_the_cached_parent() -> None:
    scheduler, kv = _scheduler(16)
    first = _request(list(range(8)))
    _run_to_completion(scheduler, first)
    assert kv.events is not None
    kv.events.drain()
    second = _request(list(range(12)) + [99])
    _run_to_completion(scheduler, second)
    (event,) = kv.events.drain()
    assert isinstance(event, BlockStored)
    hashes = second.full_block_hashes(BLOCK)
    assert event.block_hashes == [hashes[2]]
    assert event.parent_block_hash == hashes[1] == first.full_block_hashes(BLOCK)[1]
    assert event.token_ids == [8, 9, 10, 11]


def test_lora_requests_carry_the_adapter_id_and_name() -> None:
    scheduler, kv = _scheduler(16)
    scheduler.lora.register("sql", "/a")
    _run_to_completion(scheduler, _request(list(range(4)), lora="sql", lora_id=scheduler.lora.int_id("sql")))
    assert kv.events is not None
    (event,) = kv.events.drain()
    assert isinstance(event, BlockStored)
    assert (event.lora_id, event.lora_name) == (1, "sql")


def test_eviction_reports_the_evicted_blocks_least_recently_freed_first() -> None:
    scheduler, kv = _scheduler(3)
    a = _request(list(range(8)))  # 2 blocks, cached then evictable
    _run_to_completion(scheduler, a)
    b = _request(list(range(50, 62)))  # needs 3 blocks: evicts both of a's, tail first
    scheduler.add(b)
    scheduler.schedule(0.0)
    assert kv.events is not None
    events = kv.events.drain()
    ah = a.full_block_hashes(BLOCK)
    # consecutive evictions are merged into one event, in eviction order
    assert [e for e in events if isinstance(e, BlockRemoved)] == [BlockRemoved([ah[1], ah[0]])]


def test_reset_clears_everything_when_no_block_is_in_use_else_removes_only_the_dropped_ones() -> None:
    scheduler, kv = _scheduler(16)
    a = _request(list(range(8)))
    _run_to_completion(scheduler, a)
    assert kv.events is not None
    kv.events.drain()
    kv.reset_prefix_cache()
    assert kv.events.drain() == [AllBlocksCleared()]

    _run_to_completion(scheduler, a := _request(list(range(8))))
    held = _request(list(range(20, 24)) + [1])
    scheduler.add(held)
    for r, n in scheduler.schedule(0.0).scheduled:
        scheduler.complete(r, n)
    kv.events.drain()
    kv.reset_prefix_cache()
    ah = a.full_block_hashes(BLOCK)
    assert kv.events.drain() == [BlockRemoved([ah[1], ah[0]])]  # the tail was freed first


def test_no_events_are_recorded_without_a_log() -> None:
    kv = KVCache(2, BLOCK)
    assert kv.events is None
    kv.allocate(1)
    assert kv.promote(7)
    kv.release([7])
    kv.allocate(2)  # evicts 7 without a log to write to
    assert kv.stats().cached == 0
    assert kv.reset_prefix_cache() == 0


def test_batch_payload_is_vllms_array_like_layout() -> None:
    events: list[BlockStored | BlockRemoved | AllBlocksCleared] = [
        BlockStored([11, 12], None, list(range(8)), 4, 3, "sql"), BlockRemoved([2**64 - 1]), AllBlocksCleared()]
    decoded = msgpack.unpackb(encode_batch(1.5, events, 0), raw=False)
    assert decoded == [1.5, [
        ["BlockStored", [11, 12], None, list(range(8)), 4, 3, "GPU", "sql"],
        ["BlockRemoved", [2**64 - 1], "GPU"],
        ["AllBlocksCleared"],
    ], 0]


# --- flags -----------------------------------------------------------------------------------------
def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["sim", *argv])


def test_kv_events_shorthand_binds_and_replicas_offset_their_ports() -> None:
    configs = configs_from_args(_args("--replicas", "3", "--port", "0", "--kv-events", "tcp://127.0.0.1:6000"))
    settings = [c.kv_events.for_replica(c.replica_index, host="h", port=1, model="m")
                for c in configs if c.kv_events is not None]
    assert [s.endpoint for s in settings] == ["tcp://127.0.0.1:6000", "tcp://127.0.0.1:6001",
                                              "tcp://127.0.0.1:6002"]
    assert all(s.bind and s.active and s.replay_endpoint is None for s in settings)


def test_kv_events_config_follows_vllm_defaults_and_bind_heuristic() -> None:
    s = parse_kv_events(None, '{"enable_kv_cache_events": true}')
    assert s == KVEventsSettings(enable_kv_cache_events=True, publisher="zmq", endpoint="tcp://*:5557", bind=True)
    assert (s.buffer_steps, s.hwm, s.max_queue_size, s.topic) == (10_000, 100_000, 100_000, "")
    connect = parse_kv_events(None, '{"enable_kv_cache_events": true, "endpoint": "tcp://10.0.0.1:5557", '
                                     '"replay_endpoint": "tcp://*:5600", "topic": "kv@{host}:{port}@{model}"}')
    assert connect is not None and not connect.bind
    mine = connect.for_replica(2, host="127.0.0.1", port=8002, model="m")
    assert (mine.endpoint, mine.replay_endpoint, mine.topic) == ("tcp://10.0.0.1:5557", "tcp://*:5602",
                                                                 "kv@127.0.0.1:8002@m")
    disabled = parse_kv_events(None, '{"endpoint": "tcp://*:5557"}')
    assert disabled is not None and not disabled.active
    assert parse_kv_events(None, None) is None


@pytest.mark.parametrize(("shorthand", "config", "field"), [
    ("tcp://a:1", '{"enable_kv_cache_events": true}', "kv_events"),
    (None, "{not json", "kv_events_config"),
    (None, '{"enable_kv_cache_events": true, "bogus": 1}', "kv_events_config"),
    (None, '{"enable_kv_cache_events": "yes"}', "kv_events_config"),
    (None, '{"publisher": "kafka"}', "kv_events_config"),
    (None, '{"buffer_steps": 0}', "kv_events_config"),
    ("http://a:1", None, "kv_events"),
])
def test_bad_kv_event_flags_name_the_flag(shorthand: str | None, config: str | None, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_kv_events(shorthand, config)
    assert info.value.field == field


def test_offset_port_matches_vllms_data_parallel_rule() -> None:
    assert offset_port("tcp://*:5557", 0) == "tcp://*:5557"
    assert offset_port("tcp://*:5557", 2) == "tcp://*:5559"
    assert offset_port("ipc:///tmp/kv", 1) == "ipc:///tmp/kv_dp1"


def test_missing_tokenizer_file_is_a_config_error(tmp_path: object) -> None:
    with pytest.raises(ConfigError) as info:
        configs_from_args(_args("--tokenizer", "/nonexistent/tokenizer.json"))
    assert info.value.field == "tokenizer"


def test_only_consecutive_removals_are_merged_so_event_order_is_kept() -> None:
    log = KVEventLog(BLOCK)
    log.removed(1)
    log.removed(2)
    log.stored([3], 2, [0] * BLOCK, None, None)
    log.removed(4)
    assert log.drain() == [BlockRemoved([1, 2]), BlockStored([3], 2, [0] * BLOCK, BLOCK, None, None),
                           BlockRemoved([4])]
    assert len(log) == 0
