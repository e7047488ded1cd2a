"""Well-known per-request data that plugins (and the director) share through the cycle state.

``PrefixMatch`` is written by a prefix-cache producer (``approx-prefix-cache-producer``) and
read by prefix scorers and filters, and by the director's dispatch accounting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from epp.framework.scheduling import CycleState

__all__ = ["CHARS_PER_TOKEN", "PREFIX_MATCH_KEY", "PrefixMatch", "prefix_match", "prompt_tokens"]

# The picker has no tokenizer: like the Go EPP it counts 4 bytes of prompt per token, for
# prefix blocks, prefill estimates and KV estimates alike.
CHARS_PER_TOKEN = 4

# Same key name as the Go EPP's attribute, for readers of both code bases.
PREFIX_MATCH_KEY = "PrefixCacheMatchInfoKey"


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """Blocks of this request's prompt, and how many leading blocks each endpoint holds."""

    total_blocks: int
    block_size_tokens: int
    matches: Mapping[str, int] = field(default_factory=dict)

    def ratio(self, endpoint: str) -> float:
        if self.total_blocks <= 0:
            return 0.0
        return self.matches.get(endpoint, 0) / self.total_blocks

    def cached_tokens(self, endpoint: str) -> int:
        """Prompt tokens ``endpoint`` is believed to hold already."""
        return self.matches.get(endpoint, 0) * self.block_size_tokens

    def uncached_tokens(self, endpoint: str, prompt_tokens: int) -> int:
        """Prompt tokens ``endpoint`` would have to prefill (at least 1)."""
        return max(1, prompt_tokens - self.cached_tokens(endpoint))


_EMPTY = PrefixMatch(0, 0)


def prompt_tokens(prompt_bytes: int) -> int:
    """Estimated prompt tokens of a prompt of that many bytes (at least 1)."""
    return max(1, prompt_bytes // CHARS_PER_TOKEN)


def prefix_match(cycle: CycleState) -> PrefixMatch:
    """The request's match data, or an empty match when no producer ran (scores 0)."""
    value = cycle.get(PREFIX_MATCH_KEY)
    return value if isinstance(value, PrefixMatch) else _EMPTY
