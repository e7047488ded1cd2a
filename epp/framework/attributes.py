"""Well-known per-request data that plugins (and the director) share through the cycle state.

Plugins never import each other: a producer writes a typed, read-only value under a key
defined here, and consumers read that value.

- ``PrefixMatch`` is written by a prefix-cache producer (``approx-prefix-cache-producer``) and
  read by prefix scorers and filters, and by the director's dispatch accounting.
- ``InFlightLoad`` is written by ``inflight-load-producer`` and read by ``token-load-scorer``
  and ``prefill-load-scorer``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from epp.framework.scheduling import CycleState

if TYPE_CHECKING:
    from epp.requests.types import InferenceRequest

__all__ = [
    "CHARS_PER_TOKEN",
    "INFLIGHT_LOAD_KEY",
    "PREFIX_MATCH_KEY",
    "InFlightLoad",
    "PrefixMatch",
    "inflight_load",
    "prefix_match",
    "prompt_tokens",
    "request_prompt_tokens",
]

# The picker has no tokenizer: like the Go EPP it counts 4 bytes of prompt per token, for
# prefix blocks, prefill estimates and KV estimates alike.
CHARS_PER_TOKEN = 4

# Same key name as the Go EPP's attribute, for readers of both code bases.
PREFIX_MATCH_KEY = "PrefixCacheMatchInfoKey"

INFLIGHT_LOAD_KEY = "InFlightLoadKey"


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


def request_prompt_tokens(request: InferenceRequest) -> int:
    """Estimated prompt tokens (body size when there is no prompt text, e.g. token ids)."""
    return prompt_tokens(len(request.prompt) or request.size_bytes)


class InFlightLoad:
    """Per endpoint: requests, estimated tokens and prefill backlog this picker has in flight.

    A live, read-only view of the producer's counters: the producer publishes the same
    object for every request, so publishing copies nothing, and readers see the counts as
    of the moment they read. Endpoints without load read 0.
    """

    __slots__ = ("_prefill", "_requests", "_tokens")

    def __init__(self, requests: Mapping[str, int], tokens: Mapping[str, int], prefill: Mapping[str, int]) -> None:
        # The producer's own maps, not copies, and not wrapped in MappingProxyType (twice the
        # cost per lookup on the scoring hot path): the view offers getters only.
        self._requests = requests
        self._tokens = tokens
        self._prefill = prefill

    def requests(self, endpoint: str) -> int:
        return self._requests.get(endpoint, 0)

    def tokens(self, endpoint: str) -> int:
        """Estimated input plus output tokens of the requests in flight."""
        return self._tokens.get(endpoint, 0)

    def prefill_backlog(self, endpoint: str) -> int:
        """Uncached prompt tokens of in-flight requests that have no first response byte yet."""
        return self._prefill.get(endpoint, 0)


_NO_LOAD = InFlightLoad({}, {}, {})


def inflight_load(cycle: CycleState) -> InFlightLoad:
    """The picker's in-flight load, or no load at all when no producer ran."""
    value = cycle.get(INFLIGHT_LOAD_KEY)
    return value if isinstance(value, InFlightLoad) else _NO_LOAD
