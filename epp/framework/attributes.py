"""Well-known per-request data that plugins (and the director) share through the cycle state.

Plugins never import each other: a producer writes a typed, read-only value under a key
defined here, and consumers read that value.

- ``PrefixMatch`` is written by a prefix-cache producer (``approx-prefix-cache-producer``) and
  read by prefix scorers and filters, and by the director's dispatch accounting.
- ``InFlightLoad`` is written by ``inflight-load-producer`` and read by ``token-load-scorer``
  and ``prefill-load-scorer``.
- ``LatencyPredictions`` is written by ``predicted-latency-producer`` and read by
  ``latency-scorer``, ``slo-headroom-tier-filter`` and ``latency-slo-admitter``.
- ``CHARS_PER_TOKEN_KEY`` (in ``InferenceRequest.plugin_state``, not the cycle state, so
  that hooks after scheduling read it too) is written by ``approx-prefix-cache-producer``:
  the characters per token learned for the request's target model. Every token estimate
  made from prompt bytes (``request_prompt_tokens``) uses it.
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
    "CHARS_PER_TOKEN_KEY",
    "INFLIGHT_LOAD_KEY",
    "LATENCY_PREDICTIONS_KEY",
    "PREFIX_MATCH_KEY",
    "InFlightLoad",
    "LatencyPrediction",
    "LatencyPredictions",
    "PrefixMatch",
    "inflight_load",
    "latency_predictions",
    "prefix_match",
    "prompt_tokens",
    "request_chars_per_token",
    "request_prompt_tokens",
]

# The picker has no tokenizer: like the Go EPP it counts 4 bytes of prompt per token, for
# prefix blocks, prefill estimates and KV estimates alike, until the prefix producer has
# learned a model's own ratio from responses (epp/datalayer/token_ratio.py).
CHARS_PER_TOKEN = 4
CHARS_PER_TOKEN_KEY = "CharsPerTokenKey"

# Same key name as the Go EPP's attribute, for readers of both code bases.
PREFIX_MATCH_KEY = "PrefixCacheMatchInfoKey"

INFLIGHT_LOAD_KEY = "InFlightLoadKey"
LATENCY_PREDICTIONS_KEY = "LatencyPredictionInfoKey"


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


def prompt_tokens(prompt_bytes: int, chars_per_token: float = CHARS_PER_TOKEN) -> int:
    """Estimated prompt tokens of a prompt of that many bytes (at least 1)."""
    return max(1, int(prompt_bytes / chars_per_token))


def prefix_match(cycle: CycleState) -> PrefixMatch:
    """The request's match data, or an empty match when no producer ran (scores 0)."""
    value = cycle.get(PREFIX_MATCH_KEY)
    return value if isinstance(value, PrefixMatch) else _EMPTY


def request_chars_per_token(request: InferenceRequest) -> float:
    """Characters per token for this request's model: learned, or 4 when no producer learned one."""
    value = request.plugin_state.get(CHARS_PER_TOKEN_KEY)
    return value if isinstance(value, float) else CHARS_PER_TOKEN


def request_prompt_tokens(request: InferenceRequest) -> int:
    """Estimated prompt tokens (body size when there is no prompt text, e.g. token ids)."""
    return prompt_tokens(len(request.prompt) or request.size_bytes, request_chars_per_token(request))


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


@dataclass(frozen=True, slots=True)
class LatencyPrediction:
    """Predicted latency of one request on one endpoint, and its headroom against the request's SLO.

    Headroom is ``objective × sloBufferFactor − predicted`` in milliseconds: positive meets
    the objective with room to spare. A request without an objective has headroom
    ``0 − predicted`` (always negative), as in the Go EPP, so scorers fall back to
    "lowest predicted latency"; ``has_ttft_slo``/``has_tpot_slo`` say which case it is.
    ``dispatched`` is the requests this picker has in flight on the endpoint (an idle
    endpoint is an escape hatch when no endpoint meets the objective).
    """

    ttft_ms: float
    tpot_ms: float
    ttft_headroom_ms: float
    tpot_headroom_ms: float
    has_ttft_slo: bool = False
    has_tpot_slo: bool = False
    dispatched: int = 0
    kv_cache_usage: float = 0.0

    @property
    def meets_slo(self) -> bool:
        """Both objectives the request states are predicted to be met (true when it states none)."""
        return (not self.has_ttft_slo or self.ttft_headroom_ms >= 0) and (
            not self.has_tpot_slo or self.tpot_headroom_ms >= 0)


@dataclass(frozen=True, slots=True)
class LatencyPredictions:
    """Predictions per endpoint name for one request; endpoints missing here have none."""

    by_endpoint: Mapping[str, LatencyPrediction] = field(default_factory=dict)
    ttft_slo_ms: float | None = None
    tpot_slo_ms: float | None = None

    def get(self, endpoint: str) -> LatencyPrediction | None:
        return self.by_endpoint.get(endpoint)


_NO_PREDICTIONS = LatencyPredictions()


def latency_predictions(cycle: CycleState) -> LatencyPredictions:
    """What the latency producer predicted for this request; empty when it did not run."""
    value = cycle.get(LATENCY_PREDICTIONS_KEY)
    return value if isinstance(value, LatencyPredictions) else _NO_PREDICTIONS
