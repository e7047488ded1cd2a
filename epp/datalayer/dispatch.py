"""Dispatch accounting: fold a just-routed request into its endpoint's metrics until the next scrape.

Scraped metrics are up to one interval old (50 ms by default). Without this, every
request in that window sees the same numbers, and metric-based scorers send them all to
the endpoint that looked least loaded at the last scrape: a herd that serialises their
prefills. Measured on unique 2.5k-token prompts at 20 req/s over 4 simulated replicas,
that made the GIE default profile 2x worse than round-robin at p90 TTFT
(``benchmarks/routing``, workload ``no-prefix``).

So when a request is routed, the endpoint's ``Metrics`` gain an estimate: one more
waiting request (as far as the picker knows it is queued there until a scrape shows where
it is), and KV usage grown by the prompt tokens the endpoint does not already hold
(prefix-matched blocks excluded; bytes become tokens by the model's learned characters per token,
``epp.datalayer.token_ratio``). ``update_time`` is kept: this is still the old scrape,
adjusted. Scorers keep their GIE semantics; they just read fresher numbers.

Each dispatch is kept with its time until a scrape settles it, so that:

- a page whose fetch started before the dispatch (the collector records when it started)
  does not erase it: the page may have been rendered before the request arrived, and the
  dispatch stays on top of the new page until a fetch that started after it;
- a dispatch that no page settles within ``Endpoint.dispatch_ttl`` (the collector's: two
  intervals plus the scrape timeout, the longest a healthy scrape can take to reflect it)
  expires, so an estimate cannot grow while pages lack the queue series or scrapes fail.
  Expiry runs at each dispatch and at the end of each collector tick.

Counting it as waiting (not running) is what lets a burst sharing one hot prefix spill
over: within one scrape interval the queue scorer sees the hot replica's queue grow and
outweighs prefix affinity once the queue is worth more than the cache hit (measured:
24 concurrent requests on one prefix went 24/0/0 to one replica when counted as
running; see ``tests/e2e/test_routing.py``).
"""

from __future__ import annotations

import time

from epp.datalayer.endpoint import Endpoint
from epp.framework.attributes import CHARS_PER_TOKEN

__all__ = ["account_dispatch"]


def account_dispatch(endpoint: Endpoint, prompt_bytes: int, cached_tokens: int = 0, now: float | None = None,
                     chars_per_token: float = CHARS_PER_TOKEN) -> None:
    """Count a routed request on ``endpoint`` until a scrape shows it; ``now`` is ``time.monotonic()``.

    ``chars_per_token``: the request's model's (``request_chars_per_token``), 4 by default.
    """
    scraped = endpoint.scraped_metrics
    if scraped.update_time == 0.0:
        return  # never scraped: nothing to adjust, and no capacity to scale by
    capacity = scraped.cache_block_size * scraped.cache_num_blocks
    kv_fraction = 0.0
    if capacity > 0:
        kv_fraction = max(0, int(prompt_bytes / chars_per_token) - cached_tokens) / capacity
    endpoint.add_dispatch(time.monotonic() if now is None else now, kv_fraction)
