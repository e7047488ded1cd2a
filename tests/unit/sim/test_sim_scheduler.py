"""Continuous batching: admission limits, chunked prefill, prefix hits, preemption, LoRA slots."""

from __future__ import annotations

import random

from epp.sim.config import LoraModule
from epp.sim.kv_cache import KVCache, chain_seed
from epp.sim.lora import LoraManager
from epp.sim.request import RequestStatus, SimRequest
from epp.sim.scheduler import Scheduler


def make_scheduler(*, seqs: int = 8, budget: int = 64, blocks: int = 32, block_size: int = 4,
                   loras: tuple[str, ...] = (), max_loras: int = 1, load_time: float = 0.0) -> Scheduler:
    lora = LoraManager(tuple(LoraModule(n, n) for n in loras), max_loras, load_time)
    kv = KVCache(blocks, block_size)
    return Scheduler(max_num_seqs=seqs, max_num_batched_tokens=budget, kv=kv, lora=lora)


def make_request(prompt: list[int], max_tokens: int = 4, lora: str | None = None) -> SimRequest:
    return SimRequest(request_id="r", token_ids=list(prompt), num_prompt=len(prompt), max_tokens=max_tokens,
                      lora=lora, hash_seed=chain_seed(lora, None), arrival=0.0, rng=random.Random(0))


def run_step(s: Scheduler, now: float = 0.0) -> list[tuple[SimRequest, int]]:
    """One step: schedule, then complete every request like the engine does (no finishing)."""
    plan = s.schedule(now)
    for req, n in plan.scheduled:
        s.complete(req, n)
        if req.num_computed == req.num_tokens:
            req.token_ids.append(7)
    return plan.scheduled


def test_requests_beyond_max_num_seqs_wait() -> None:
    s = make_scheduler(seqs=2)
    reqs = [make_request([1, 2, 3]) for _ in range(5)]
    for r in reqs:
        s.add(r)
    run_step(s)
    assert len(s.running) == 2 and len(s.waiting) == 3
    assert [r.status for r in reqs[:2]] == [RequestStatus.RUNNING] * 2


def test_long_prompts_are_prefilled_in_chunks_within_the_token_budget() -> None:
    s = make_scheduler(budget=8, blocks=64)
    req = make_request(list(range(20)))
    s.add(req)
    assert run_step(s) == [(req, 8)]
    assert run_step(s) == [(req, 8)]
    assert run_step(s) == [(req, 4)]
    assert req.num_output == 1  # the first token comes with the last chunk
    assert run_step(s) == [(req, 1)]  # then one token per step


def test_decode_steps_come_first_and_share_the_budget_with_new_prefills() -> None:
    s = make_scheduler(budget=10)
    a = make_request([1, 2, 3, 4])
    s.add(a)
    run_step(s)
    b = make_request(list(range(100, 120)))
    s.add(b)
    plan = s.schedule(0.0)
    assert plan.scheduled == [(a, 1), (b, 9)]
    assert plan.work.decode_seqs == 1 and plan.work.prefill_tokens == 9


def test_a_repeated_prefix_is_taken_from_the_cache_and_not_prefilled() -> None:
    s = make_scheduler(block_size=4, budget=64)
    prefix = list(range(16))
    first = make_request([*prefix, 50, 51])
    s.add(first)
    run_step(s)
    s.finish(first)
    second = make_request([*prefix, 60, 61])
    s.add(second)
    plan = s.schedule(0.0)
    assert plan.prefix_queries == 18 and plan.prefix_hits == 16
    assert plan.scheduled == [(second, 2)]
    assert second.cached_tokens == 16


def test_a_fully_cached_prompt_still_computes_its_last_token() -> None:
    s = make_scheduler(block_size=4)
    prompt = list(range(8))
    first = make_request(prompt)
    s.add(first)
    run_step(s)
    s.finish(first)
    again = make_request(prompt)
    s.add(again)
    plan = s.schedule(0.0)
    assert plan.prefix_hits == 4 and plan.scheduled == [(again, 4)]


def test_kv_usage_tracks_the_tokens_held() -> None:
    s = make_scheduler(block_size=4, blocks=100, budget=1000)
    for length in (4, 5, 12):
        s.add(make_request(list(range(length)), max_tokens=100))
    run_step(s)  # prompts computed, one token sampled each (not yet in KV)
    assert s.kv.used == 1 + 2 + 3
    for _ in range(4):
        run_step(s)  # each decode puts one more token in KV
    assert s.kv.used == 2 + 3 + 4  # 8, 9 and 16 tokens


def test_requests_wait_when_kv_blocks_are_short_and_head_of_line_blocks() -> None:
    s = make_scheduler(block_size=4, blocks=6, budget=100)
    big = make_request(list(range(20)), max_tokens=3)  # 5 blocks
    small = make_request([90, 91])
    blocked = make_request(list(range(200, 212)))  # 3 blocks: does not fit next to big
    for r in (big, blocked, small):
        s.add(r)
    run_step(s)
    assert s.running == [big]
    assert list(s.waiting) == [blocked, small]  # small fits but waits behind blocked (FCFS)


def test_running_out_of_blocks_while_decoding_preempts_the_newest_request() -> None:
    s = make_scheduler(block_size=4, blocks=4, budget=100)
    old = make_request([1, 2, 3, 4, 5, 6, 7], max_tokens=50)  # 2 blocks
    new = make_request([11, 12, 13, 14, 15, 16, 17], max_tokens=50)
    s.add(old)
    s.add(new)
    run_step(s)
    assert s.kv.used == 4
    run_step(s)  # both fill their second block (8 tokens)
    plan = s.schedule(0.0)  # both need a third block: the newest is preempted
    assert plan.preempted == 1
    assert s.running == [old] and list(s.waiting) == [new]
    assert new.num_computed == 0 and new.blocks == [] and new.status is RequestStatus.WAITING
    assert s.preemptions == 1


def test_a_request_for_an_adapter_that_is_loading_waits_while_others_pass() -> None:
    s = make_scheduler(loras=("sql",), load_time=0.5)
    lora_req = make_request([1, 2, 3], lora="sql")
    base_req = make_request([4, 5, 6])
    s.add(lora_req)
    s.add(base_req)
    run_step(s, now=0.0)
    assert s.running == [base_req] and list(s.waiting) == [lora_req]
    assert s.lora.next_ready_time() == 0.5
    run_step(s, now=0.2)
    assert list(s.waiting) == [lora_req]
    run_step(s, now=0.5)
    assert lora_req in s.running and s.lora.resident() == ["sql"]


def test_adapters_in_use_keep_their_slot() -> None:
    s = make_scheduler(loras=("a", "b"), max_loras=1)
    ra = make_request([1, 2], lora="a", max_tokens=10)
    rb = make_request([3, 4], lora="b")
    s.add(ra)
    run_step(s)
    s.add(rb)
    run_step(s)
    assert rb.status is RequestStatus.WAITING  # the only slot holds "a", which is running
    s.finish(ra)
    run_step(s)
    assert rb.status is RequestStatus.RUNNING and s.lora.resident() == ["b"]
