"""What the latency predictor knows about one (request, endpoint) pair at scheduling time.

Raw features are captured once per candidate in PrepareData and kept for the chosen
endpoint until the response completes, so a training sample pairs the measured latency
with the state the endpoint was in when the decision was made (as the Go EPP does).

The two models read different linear terms of the same features:

- TTFT (``TTFT_TERMS``): the request's own uncached prompt, the prefill work ahead of it
  (this picker's in-flight prefill backlog), the engine's waiting queue, and the running
  batch and KV usage, which slow every step the prefill shares.
- TPOT (``TPOT_TERMS``): the running batch and KV usage (a decode step reads every running
  sequence's context, which KV usage measures), prefill chunks interleaved with decode, this
  picker's requests in flight there (fresh, unlike the scraped running batch) and the rate of
  prompt tokens this picker recently routed there (``routed_rate``): the prompts arriving
  during this request's decode, which stall its steps (``routed_rate`` module).

Token counts enter in thousands so all coefficients have similar magnitudes, which keeps
the normal equations well conditioned.
"""

from __future__ import annotations

from typing import NamedTuple

from epp.datalayer.endpoint import Endpoint
from epp.framework.attributes import InFlightLoad, PrefixMatch

__all__ = ["TPOT_TERMS", "TTFT_TERMS", "Features", "features_for", "tpot_terms", "ttft_terms"]

TTFT_TERMS = ("bias", "uncached_ktokens", "prefill_backlog_ktokens", "waiting", "running", "kv_usage")
TPOT_TERMS = ("bias", "running", "kv_usage", "prefill_backlog_ktokens", "waiting", "inflight_requests",
              "routed_ktokens_per_s")


class Features(NamedTuple):
    """One candidate's state as the request saw it (a tuple: cheap to build, JSON-friendly)."""

    kv_usage: float  # fraction in [0, 1]
    waiting: float
    running: float
    input_tokens: float
    prefix_fraction: float  # share of the prompt the endpoint is believed to hold
    prefill_backlog: float  # uncached prompt tokens in flight without a first byte yet
    inflight_tokens: float
    inflight_requests: float
    routed_rate: float = 0.0  # prompt tokens/s this picker recently routed to the endpoint

    @property
    def uncached_tokens(self) -> float:
        return max(1.0, self.input_tokens * (1.0 - self.prefix_fraction))


def features_for(endpoint: Endpoint, input_tokens: int, prefix: PrefixMatch, load: InFlightLoad,
                 routed_rate: float = 0.0) -> Features:
    metrics = endpoint.metrics
    name = endpoint.name
    return Features(metrics.kv_cache_usage_percent, float(metrics.waiting_queue_size),
                    float(metrics.running_requests_size), float(input_tokens), prefix.ratio(name),
                    float(load.prefill_backlog(name)), float(load.tokens(name)), float(load.requests(name)),
                    routed_rate)


def ttft_terms(f: Features) -> tuple[float, ...]:
    return (1.0, f.uncached_tokens / 1000.0, f.prefill_backlog / 1000.0, f.waiting, f.running, f.kv_usage)


def tpot_terms(f: Features) -> tuple[float, ...]:
    return (1.0, f.running, f.kv_usage, f.prefill_backlog / 1000.0, f.waiting, f.inflight_requests,
            f.routed_rate / 1000.0)
