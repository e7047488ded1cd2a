"""``prefill-load-scorer`` (ours, not in the Go EPP): prefer the endpoint that starts this
request's prefill soonest.

Time to first token is mostly the prompt tokens an endpoint must prefill before this
request's first token: those of requests already routed there that have not produced a
first token (``inflight-load-producer``'s prefill backlog), plus this prompt's tokens the
endpoint does not already hold (the prefix match, when a prefix producer runs). Scraped
metrics cannot show that backlog: a prefilling request counts as "running" and holds
little KV yet, so metric-based scorers send bursts of long unique prompts to the same
replica and their prefills queue (measured in ``benchmarks/routing``, workload
``no-prefix``).

Cost per endpoint = backlog + uncached prompt tokens; score = ``min_cost / cost`` (the
cheapest endpoint scores 1.0; one twice as costly 0.5). Category: Balance (it weighs
load against cache affinity). No parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.datalayer.endpoint import Endpoint
from epp.framework.attributes import INFLIGHT_LOAD_KEY, inflight_load, prefix_match, request_prompt_tokens
from epp.framework.plugin import BasePlugin
from epp.framework.scheduling import CycleState, ScorerCategory
from epp.requests.types import InferenceRequest

__all__ = ["PrefillLoadScorer"]


class PrefillLoadScorer(BasePlugin):
    """Prefers endpoints with the fewest prompt tokens to prefill before this request's first token."""

    TYPE = "prefill-load-scorer"
    CONSUMES = frozenset({INFLIGHT_LOAD_KEY})

    def category(self) -> ScorerCategory:
        return ScorerCategory.BALANCE

    def score(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> Sequence[float]:
        backlog = inflight_load(cycle).prefill_backlog
        match = prefix_match(cycle)
        tokens = request_prompt_tokens(request)
        costs = [backlog(ep.name) + match.uncached_tokens(ep.name, tokens) for ep in endpoints]
        cheapest = min(costs)
        return [cheapest / cost for cost in costs]
