"""How long one engine step takes, from what the step computes.

One step is one forward pass over a mixed batch (vLLM V1 chunked prefill): some sequences
prefill a chunk of new tokens, the others decode one token each. Its simulated duration is
linear in the work::

    step = step_base                                  fixed cost: weights streamed once
         + prefill_per_token     * P                  P   = new prefill tokens (cache misses)
         + prefill_attn_per_pair * A                  A   = sum over chunks of n * (c + n / 2)
         + decode_per_seq        * D                  D   = decoding sequences
         + decode_per_ctx_token  * C                  C   = sum of their context lengths

where a prefill chunk of ``n`` new tokens follows ``c`` tokens already in KV (cached prefix
or earlier chunks). Prefix-cache hits never appear in ``P``; they only cost attention in
``A``, which is why a hit makes time-to-first-token short. The wall-clock duration is
``step * speed * time_scale``.
"""

from __future__ import annotations

from dataclasses import dataclass

from epp.sim.config import SimConfig

__all__ = ["StepWork", "CostModel"]


@dataclass(frozen=True, slots=True)
class StepWork:
    """What one step computes; the scheduler fills it in."""

    prefill_tokens: int = 0
    attn_pairs: float = 0.0
    decode_seqs: int = 0
    decode_context: int = 0

    @property
    def tokens(self) -> int:
        """Tokens processed in the step (``vllm:iteration_tokens_total``)."""
        return self.prefill_tokens + self.decode_seqs


class CostModel:
    """Step durations for one replica's coefficients."""

    __slots__ = ("_base", "_prefill", "_attn", "_seq", "_ctx", "_wall")

    def __init__(self, config: SimConfig) -> None:
        self._base = config.step_base
        self._prefill = config.prefill_per_token
        self._attn = config.prefill_attn_per_pair
        self._seq = config.decode_per_seq
        self._ctx = config.decode_per_ctx_token
        self._wall = config.wall_factor

    def simulated(self, work: StepWork) -> float:
        """Simulated seconds the step takes on the modelled GPU."""
        return (
            self._base
            + self._prefill * work.prefill_tokens
            + self._attn * work.attn_pairs
            + self._seq * work.decode_seqs
            + self._ctx * work.decode_context
        )

    def wall(self, work: StepWork) -> float:
        """Wall-clock seconds the step takes after ``speed`` and ``time_scale``."""
        return self.simulated(work) * self._wall
