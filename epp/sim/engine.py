"""The step loop of one replica: schedule, sleep for the step's duration, deliver tokens.

One asyncio task per replica runs ``Engine.run``. Each iteration is one engine step:

1. ``Scheduler.schedule`` picks the batch (continuous batching, chunked prefill, prefix
   cache, preemption).
2. ``CostModel`` turns the batch into a duration; the loop sleeps until the step's deadline.
   Deadlines are chained (``deadline += duration``) so the simulated GPU keeps its pace even
   when the event loop wakes late; if the process falls more than ``_MAX_LAG`` behind (an
   overloaded machine), the debt is dropped instead of being paid back in a burst.
3. Every sequence that finished its prefill or decoded in the step gets one token, and its
   handler is woken once.

CPU cost: at most one timer per step per replica and none shorter than ``_MIN_SLEEP``
(1 ms): with ``time_scale`` small enough that steps last less than that, several steps run
back to back and their tokens are delivered at the next wake-up, stamped with their due
time. With no work the loop waits on an event that submissions set; nothing polls.

Determinism: request ids and injected failures come from a ``random.Random`` seeded with
``seed`` and the replica index. A request's output comes from its own ``seed`` field if
given, else from ``seed`` and its prompt tokens, so, as with greedy decoding, the same prompt
gets the same answer on every replica and every run. Same seed and same request sequence
give the same ids, texts and step durations; only wall-clock jitter differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from array import array
from collections.abc import Callable
from typing import Protocol

import xxhash

from epp.sim.config import SimConfig
from epp.sim.cost import CostModel
from epp.sim.kv_cache import KVCache, chain_seed
from epp.sim.kv_events import KVEvent, KVEventLog
from epp.sim.lora import LoraManager
from epp.sim.metrics import MetricsSink, build_metrics
from epp.sim.openai_request import ParsedRequest
from epp.sim.request import RequestStatus, SimRequest
from epp.sim.scheduler import Scheduler, StepPlan
from epp.sim.stats import SimStats
from epp.sim.textgen import TextGenerator
from epp.sim.tokenizer import Tokenizer

__all__ = ["Engine"]

# xxhash seeds are unsigned 64-bit integers; --seed may be negative.
_U64 = (1 << 64) - 1

# How far (wall seconds) the loop may fall behind its deadlines before it stops catching up.
_MAX_LAG = 0.05

# Shortest sleep worth a timer (wall seconds); uvloop's timers have 1 ms resolution anyway.
# Steps due sooner run back to back and their tokens go out together at the next wake-up.
_MIN_SLEEP = 0.001


class EventSink(Protocol):
    """Where a step's KV events go (``KVEventPublisher``); must not block."""

    def publish(self, ts: float, events: list[KVEvent]) -> None: ...


class Engine:
    """Scheduler, KV cache, adapters, cost model and metrics of one replica.

    Concurrency: everything runs on one event loop; handlers call ``submit`` / ``abort`` and
    the loop task is the only other writer.
    """

    def __init__(self, config: SimConfig, tokenizer: Tokenizer) -> None:
        self.config = config
        self.kv = KVCache(config.num_gpu_blocks, config.block_size, caching=config.enable_prefix_caching)
        self.lora = LoraManager(config.lora_modules, config.max_loras,
                                config.lora_load_time * config.wall_factor)
        self.scheduler = Scheduler(max_num_seqs=config.max_num_seqs,
                                   max_num_batched_tokens=config.max_num_batched_tokens,
                                   kv=self.kv, lora=self.lora)
        self.cost = CostModel(config)
        self.metrics: MetricsSink = build_metrics(config, self)
        self._textgen = TextGenerator(tokenizer)
        self._ids = random.Random(f"{config.seed}/{config.replica_index}")
        self._events: EventSink | None = None
        self._wake = asyncio.Event()
        self._running = asyncio.Event()
        self._running.set()
        self._counts = dict.fromkeys(("received", "finished", "aborted", "prompt", "generated", "queries",
                                      "hits", "steps"), 0)

    # --- EngineView (read by the metrics page) ------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def kv_usage(self) -> float:
        return self.kv.usage()

    def kv_used_blocks(self) -> int:
        return self.kv.used

    def running_loras(self) -> list[str]:
        return sorted(self.scheduler.running_loras())

    def waiting_loras(self) -> list[str]:
        return sorted(self.scheduler.waiting_loras())

    def scheduled_loras(self) -> list[str]:
        return sorted(self.scheduler.scheduled_loras())

    # --- KV events ---------------------------------------------------------------------------
    def publish_kv_events(self, sink: EventSink) -> None:
        """Record block stores, evictions and clears from now on; one batch per step goes to ``sink``."""
        self.kv.events = KVEventLog(self.config.block_size)
        self._events = sink

    def flush_kv_events(self) -> None:
        """Hand the events recorded since the last flush to the sink as one batch (if any)."""
        log, sink = self.kv.events, self._events
        if log is not None and sink is not None and len(log):
            sink.publish(time.time(), log.drain())

    def reset_prefix_cache(self) -> int:
        """vLLM's ``/reset_prefix_cache``: drop every cached block nobody holds; returns how many."""
        dropped = self.kv.reset_prefix_cache()
        self.flush_kv_events()
        return dropped

    # --- requests ----------------------------------------------------------------------------
    def new_request_id(self, prefix: str) -> str:
        """A deterministic id such as ``cmpl-<32 hex>``."""
        return f"{prefix}-{self._ids.getrandbits(128):032x}"

    def submit(self, parsed: ParsedRequest, request_id: str) -> SimRequest:
        """Queue a validated request; the handler then waits on the returned object."""
        self._counts["received"] += 1
        seed = parsed.seed
        if seed is None:  # like greedy decoding: the same prompt gives the same answer everywhere
            prompt = array("q", parsed.prompt_ids).tobytes()
            seed = xxhash.xxh64_intdigest(prompt, seed=self.config.seed & _U64)
        req = SimRequest(
            request_id=request_id,
            token_ids=list(parsed.prompt_ids),
            num_prompt=len(parsed.prompt_ids),
            max_tokens=parsed.max_tokens,
            lora=parsed.lora,
            hash_seed=chain_seed(parsed.lora, parsed.cache_salt),
            arrival=asyncio.get_running_loop().time(),
            stop_reason="length" if parsed.max_tokens_explicit else "stop",
            rng=random.Random(seed),
            lora_id=self.lora.int_id(parsed.lora),
        )
        self.scheduler.add(req)
        self._wake.set()
        return req

    def abort(self, req: SimRequest) -> None:
        """Drop a request whose client went away; frees its KV blocks at once."""
        if req.done:
            return
        self.scheduler.finish(req)
        req.status = RequestStatus.ABORTED
        self._counts["aborted"] += 1
        self.metrics.on_finished(req, "abort", asyncio.get_running_loop().time())
        req.notify()

    def draw_failure(self) -> bool:
        """Whether the next request gets an injected failure (``fail_rate``)."""
        rate = self.config.fail_rate
        return rate > 0 and self._ids.random() < rate

    # --- pause (fault mode "hang") ----------------------------------------------------------------
    def pause(self) -> None:
        """Stop stepping after the current step; requests keep waiting."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    # --- the loop ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Step until cancelled."""
        loop = asyncio.get_running_loop()
        clock = loop.time
        deadline = last_yield = clock()
        scheduler = self.scheduler
        while True:
            if not self._running.is_set():
                await self._running.wait()
                deadline = clock()
                continue
            if not scheduler.has_work():
                self._wake.clear()
                await self._wake.wait()
                deadline = clock()
                continue
            now = clock()
            plan = scheduler.schedule(now)
            if not plan.scheduled:
                if not plan.preempted:
                    await self._idle_until(self.lora.next_ready_time(), clock)
                    deadline = clock()
                continue
            deadline = max(deadline, now - _MAX_LAG) + self.cost.wall(plan.work)
            delay = deadline - clock()
            if delay >= _MIN_SLEEP:
                await asyncio.sleep(delay)
                last_yield = clock()
            elif clock() - last_yield >= _MIN_SLEEP:
                await asyncio.sleep(0)  # behind or nearly due: still let handlers run
                last_yield = clock()
            self._apply(plan, max(clock(), deadline))

    async def _idle_until(self, when: float | None, clock: Callable[[], float]) -> None:
        """Nothing can run: wait for a submission, or until an adapter finishes loading."""
        self._wake.clear()
        timeout = None if when is None else max(0.0, when - clock())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _apply(self, plan: StepPlan, now: float) -> None:
        """Deliver the results of a finished step."""
        counts = self._counts
        counts["steps"] += 1
        counts["queries"] += plan.prefix_queries
        counts["hits"] += plan.prefix_hits
        scheduler, metrics, textgen = self.scheduler, self.metrics, self._textgen
        for req, computed in plan.scheduled:
            if req.status is not RequestStatus.RUNNING:
                continue  # aborted while the step ran
            scheduler.complete(req, computed)
            if req.num_computed < req.num_tokens:
                continue  # a prefill chunk that did not reach the end of the prompt
            piece, token = textgen.next_piece(req.rng, req.output_text[-1] if req.output_text else None)
            req.token_ids.append(token)
            req.output_text.append(piece)
            counts["generated"] += 1
            if req.first_token is None:
                req.first_token = now
                counts["prompt"] += req.num_prompt
            metrics.on_token(req, now)
            req.last_token = now
            if req.num_output >= req.max_tokens:
                scheduler.finish(req)
                req.status = RequestStatus.FINISHED
                req.finished_at = now
                counts["finished"] += 1
                metrics.on_finished(req, req.stop_reason, now)
            req.notify()
        metrics.on_step(plan, now)
        if self._events is not None:
            self.flush_kv_events()

    # --- snapshot -------------------------------------------------------------------------------------
    def stats(self, *, fault: str = "ok", failed: int = 0) -> SimStats:
        kv = self.kv.stats()
        counts = self._counts
        return SimStats(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            kv_usage=kv.usage,
            kv_blocks_used=kv.used,
            kv_blocks_cached=kv.cached,
            num_gpu_blocks=kv.num_blocks,
            prefix_queries=counts["queries"],
            prefix_hits=counts["hits"],
            requests_received=counts["received"],
            requests_finished=counts["finished"],
            requests_aborted=counts["aborted"],
            requests_failed=failed,
            prompt_tokens=counts["prompt"],
            generation_tokens=counts["generated"],
            preemptions=self.scheduler.preemptions,
            steps=counts["steps"],
            resident_loras=tuple(self.lora.resident()),
            registered_loras=tuple(self.lora.registered()),
            fault=fault,
        )
