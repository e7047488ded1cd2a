"""Continuous batching: which requests run in the next step, and how many tokens each computes.

A simplified vLLM V1 scheduler, one call per engine step:

1. **Running requests first**, in admission order. Each gets the tokens it still needs (its
   prompt remainder while prefilling, 1 while decoding) within the token budget
   ``max_num_batched_tokens``; long prompts are thus prefilled in chunks. If the KV cache
   cannot hold the new tokens, the most recently admitted running request is **preempted**
   (vLLM's recompute mode): its blocks are freed and it goes back to the head of the waiting
   queue, to be prefilled again later (usually hitting its own blocks in the prefix cache).
2. **Then waiting requests**, first come first served, while fewer than ``max_num_seqs`` run
   and budget remains, and only if nothing was preempted in this step. A request's cached
   prefix (at most ``num_tokens - 1`` tokens, in full blocks) is taken from the prefix
   cache; the rest is prefilled. If its blocks do not fit, admission stops (head-of-line
   blocking, as in vLLM). A request whose LoRA adapter is not resident is skipped (its
   adapter starts loading if a slot allows) and keeps its place in the queue.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field

from epp.sim.cost import StepWork
from epp.sim.kv_cache import KVCache
from epp.sim.lora import LoraManager
from epp.sim.request import RequestStatus, SimRequest

__all__ = ["Scheduler", "StepPlan"]


@dataclass(slots=True)
class StepPlan:
    """The outcome of one scheduling pass."""

    scheduled: list[tuple[SimRequest, int]] = field(default_factory=list)
    work: StepWork = field(default_factory=StepWork)
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hits: int = 0  # tokens found there
    preempted: int = 0


class Scheduler:
    """Owns the waiting queue, the running batch and the KV cache of one replica.

    Concurrency: event-loop owned; only the engine calls ``schedule`` / ``finish`` / ``abort``.
    """

    __slots__ = ("max_num_seqs", "budget", "kv", "lora", "waiting", "running", "preemptions")

    def __init__(self, *, max_num_seqs: int, max_num_batched_tokens: int, kv: KVCache,
                 lora: LoraManager) -> None:
        self.max_num_seqs = max_num_seqs
        self.budget = max_num_batched_tokens
        self.kv = kv
        self.lora = lora
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.preemptions = 0

    def add(self, req: SimRequest) -> None:
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def running_loras(self) -> set[str]:
        return {r.lora for r in self.running if r.lora is not None}

    def waiting_loras(self) -> set[str]:
        return {r.lora for r in self.waiting if r.lora is not None}

    def scheduled_loras(self) -> set[str]:
        """Adapters with a request that has been scheduled and not finished: running, or
        preempted back to waiting (what vLLM 0.32 tracks; a request never scheduled is not)."""
        return self.running_loras() | {r.lora for r in self.waiting
                                       if r.lora is not None and r.first_scheduled is not None}

    def schedule(self, now: float) -> StepPlan:
        """Pick the next step's work; an empty plan means nothing can run now."""
        plan = StepPlan()
        budget = self._schedule_running(plan, self.budget)
        if not plan.preempted:
            self._schedule_waiting(plan, budget, now)
        prefill = decode = ctx = 0
        pairs = 0.0
        for req, n in plan.scheduled:
            if req.num_computed >= req.num_prompt:
                decode += 1
                ctx += req.num_computed
            else:
                prefill += n
                pairs += n * (req.num_computed + n / 2)
        plan.work = StepWork(prefill_tokens=prefill, attn_pairs=pairs, decode_seqs=decode, decode_context=ctx)
        return plan

    def _blocks_needed(self, req: SimRequest, tokens: int) -> int:
        size = self.kv.block_size
        return (tokens + size - 1) // size - len(req.blocks)

    def _schedule_running(self, plan: StepPlan, budget: int) -> int:
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            n = min(req.num_tokens - req.num_computed, budget)
            need = self._blocks_needed(req, req.num_computed + n)
            while need > 0 and not self.kv.can_allocate(need):
                victim = running.pop()
                self._preempt(victim)
                plan.preempted += 1
                if victim is req:
                    break
            if req.status is not RequestStatus.RUNNING:
                break  # the request itself was preempted; nothing after it is left
            if need > 0:
                req.blocks.extend(self.kv.allocate(need))
            plan.scheduled.append((req, n))
            budget -= n
            i += 1
        return budget

    def _schedule_waiting(self, plan: StepPlan, budget: int, now: float) -> None:
        skipped: list[SimRequest] = []
        waiting, kv, size = self.waiting, self.kv, self.kv.block_size
        in_use: set[str] | None = None
        while waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = waiting[0]
            if req.lora is not None:
                if in_use is None:
                    in_use = self.running_loras()
                if not self.lora.ready(req.lora, now, in_use):
                    skipped.append(waiting.popleft())
                    continue
            hashes = req.full_block_hashes(size)
            hit_blocks, evictable = kv.match(hashes, (req.num_tokens - 1) // size)
            cached = hit_blocks * size
            n = min(req.num_tokens - cached, budget)
            need = (cached + n + size - 1) // size - hit_blocks
            if not kv.can_allocate(need, evictable):
                break
            waiting.popleft()
            req.blocks = kv.acquire(hashes[:hit_blocks]) + kv.allocate(need)
            req.num_computed = cached
            if req.first_scheduled is None:
                req.first_scheduled = now
                req.cached_tokens = cached
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            if req.lora is not None and in_use is not None:
                in_use.add(req.lora)
            plan.scheduled.append((req, n))
            plan.prefix_queries += req.num_tokens
            plan.prefix_hits += cached
            budget -= n
        waiting.extendleft(reversed(skipped))

    def _preempt(self, req: SimRequest) -> None:
        self.kv.release(req.blocks)
        req.blocks = []
        req.num_computed = 0
        req.status = RequestStatus.WAITING
        self.waiting.appendleft(req)
        self.preemptions += 1

    def complete(self, req: SimRequest, computed: int) -> None:
        """Record that a step computed ``computed`` tokens of ``req``; cache full blocks."""
        size = self.kv.block_size
        before = req.num_computed // size
        req.num_computed += computed
        after = req.num_computed // size
        if after > before and self.kv.caching:
            hashes = req.full_block_hashes(size)
            blocks = req.blocks
            stored: list[int] = []
            for i in range(before, min(after, len(hashes))):
                if blocks[i] == -1 and self.kv.promote(hashes[i]):
                    blocks[i] = hashes[i]
                    stored.append(i)
            if stored and self.kv.events is not None:
                self._report_stored(req, stored, hashes)

    def _report_stored(self, req: SimRequest, stored: list[int], hashes: list[int]) -> None:
        """One ``BlockStored`` per run of consecutive newly cached blocks, as vLLM reports them."""
        log, size = self.kv.events, self.kv.block_size
        assert log is not None
        start = prev = stored[0]
        for i in [*stored[1:], -1]:
            if i == prev + 1:
                prev = i
                continue
            log.stored(hashes[start:prev + 1], hashes[start - 1] if start else None,
                       req.token_ids[start * size:(prev + 1) * size], req.lora_id, req.lora)
            start = prev = i

    def finish(self, req: SimRequest) -> None:
        """Release a request that ended (finished or aborted), wherever it is."""
        if req.status is RequestStatus.RUNNING:
            self.running.remove(req)
        elif req.status is RequestStatus.WAITING:
            with contextlib.suppress(ValueError):
                self.waiting.remove(req)
        self.kv.release(req.blocks)
        req.blocks = []
