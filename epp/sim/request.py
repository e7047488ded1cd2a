"""The engine's view of one request: its tokens, KV blocks, timestamps and output channel.

The engine appends generated tokens and calls ``notify()`` once per step; the HTTP handler
waits in ``wait()`` and reads what is new. This keeps one wake-up per step for every
request, whatever the number of tokens produced in between.
"""

from __future__ import annotations

import asyncio
import enum
import random
from dataclasses import dataclass, field

from epp.sim.kv_cache import hash_blocks

__all__ = ["RequestStatus", "SimRequest"]


class RequestStatus(enum.Enum):
    """Where a request is in its life; the engine is the only writer."""

    WAITING = "waiting"  # in the waiting queue (new, or preempted)
    RUNNING = "running"  # in the running batch
    FINISHED = "finished"  # all tokens produced
    ABORTED = "aborted"  # client went away or the server stopped


@dataclass(eq=False, slots=True)
class SimRequest:
    """Mutable per-request state shared by the engine (writer) and one handler (reader).

    ``token_ids`` holds the prompt followed by the output; ``num_computed`` counts the tokens
    whose KV has been computed. A request needs ``len(token_ids) - num_computed`` tokens of
    work in its next step: its prompt remainder while prefilling, 1 while decoding.
    """

    request_id: str
    token_ids: list[int]
    num_prompt: int
    max_tokens: int
    lora: str | None
    hash_seed: int
    arrival: float  # loop time
    rng: random.Random  # picks the output pieces
    stop_reason: str = "length"  # finish_reason once max_tokens is reached
    status: RequestStatus = RequestStatus.WAITING
    num_computed: int = 0
    blocks: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    output_text: list[str] = field(default_factory=list)
    cached_tokens: int = 0  # prefix-cache hit at first admission
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    finished_at: float | None = None
    lora_id: int | None = None  # the adapter's integer id, reported in KV events
    _waiter: asyncio.Future[None] | None = None
    _read: int = 0

    # --- engine side --------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - self.num_prompt

    @property
    def done(self) -> bool:
        return self.status is RequestStatus.FINISHED or self.status is RequestStatus.ABORTED

    def full_block_hashes(self, block_size: int) -> list[int]:
        """Hashes of every full block of the current tokens, computed once per block."""
        known = len(self.block_hashes)
        if (known + 1) * block_size <= len(self.token_ids):
            prev = self.block_hashes[-1] if known else self.hash_seed
            self.block_hashes.extend(hash_blocks(self.token_ids, block_size, known, prev))
        return self.block_hashes

    def notify(self) -> None:
        """Wake the handler waiting for output (at most once per step)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- handler side -------------------------------------------------------------------------
    async def wait(self) -> None:
        """Return once there is unread output or the request is done."""
        while not self.done and self._read >= self.num_output:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def take_new_text(self) -> list[str]:
        """Output pieces produced since the last call."""
        start = self._read
        self._read = len(self.output_text)
        return self.output_text[start:]
