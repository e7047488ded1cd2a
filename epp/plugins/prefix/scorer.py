"""``prefix-cache-scorer``: prefer endpoints that already hold the prompt's prefix.

Score = matched blocks / total blocks, from the ``approx-prefix-cache-producer`` (created
automatically when the config does not name one). A prompt shorter than one block
scores 0 everywhere. Category: Affinity.

Parameters: none in current GIE (which ignores any given here). The parameters older GIE
versions took here (``hashBlockSize`` in characters, ``blockSize``,
``maxPrefixBlocksToMatch``, ``lruCapacityPerServer``, ``autoTune``) and the producer's own
names (``blockSizeTokens``, ``maxPrefixTokensToMatch``) are accepted so such configs load,
and they configure the auto-created producer; they are ignored (with a warning) when the
config defines the producer itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.framework.attributes import CHARS_PER_TOKEN, PREFIX_MATCH_KEY, prefix_match
from epp.framework.params import require
from epp.framework.plugin import BasePlugin
from epp.framework.scheduling import CycleState, ScorerCategory
from epp.requests.types import InferenceRequest

__all__ = ["LegacyPrefixScorerParams", "PrefixCacheScorer"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LegacyPrefixScorerParams:
    hash_block_size: int | None = None  # v1.0: characters per block
    block_size: int | None = None  # v1.3: tokens per block
    block_size_tokens: int | None = None  # the producer's name for it
    max_prefix_blocks_to_match: int | None = None
    max_prefix_tokens_to_match: int | None = None
    lru_capacity_per_server: int | None = None
    auto_tune: bool | None = None

    def __post_init__(self) -> None:
        for attr in ("hash_block_size", "block_size", "block_size_tokens", "max_prefix_blocks_to_match",
                     "max_prefix_tokens_to_match", "lru_capacity_per_server"):
            value = getattr(self, attr)
            require(value is None or value > 0, attr, "must be > 0", value)


class PrefixCacheScorer(BasePlugin):
    """Scores endpoints by the fraction of the prompt's prefix blocks they hold."""

    TYPE = "prefix-cache-scorer"
    PARAMS = LegacyPrefixScorerParams
    CONSUMES = frozenset({PREFIX_MATCH_KEY})
    params: LegacyPrefixScorerParams

    def category(self) -> ScorerCategory:
        return ScorerCategory.AFFINITY

    def score(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> Sequence[float]:
        match = prefix_match(cycle)
        if match.total_blocks <= 0:
            return [0.0] * len(endpoints)
        total = match.total_blocks
        matches = match.matches
        return [matches.get(ep.name, 0) / total for ep in endpoints]

    def default_producer_parameters(self) -> dict[str, Any] | None:
        """Producer parameters implied by legacy scorer parameters (for the auto-created producer)."""
        p = self.params
        if p is None:
            return None
        out: dict[str, Any] = {}
        if p.block_size_tokens is not None:
            out["blockSizeTokens"] = p.block_size_tokens
        elif p.block_size is not None:
            out["blockSizeTokens"] = p.block_size
        elif p.hash_block_size is not None:
            out["blockSizeTokens"] = max(1, p.hash_block_size // CHARS_PER_TOKEN)
        if p.max_prefix_blocks_to_match is not None:
            out["maxPrefixBlocksToMatch"] = p.max_prefix_blocks_to_match
        if p.max_prefix_tokens_to_match is not None:
            out["maxPrefixTokensToMatch"] = p.max_prefix_tokens_to_match
        if p.lru_capacity_per_server is not None:
            out["lruCapacityPerServer"] = p.lru_capacity_per_server
        if p.auto_tune is not None:
            out["autoTune"] = p.auto_tune
        return out or None
