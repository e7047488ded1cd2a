"""``dispatch-accounting``: count a just-routed request on its endpoint until the next scrape.

The director adds it after the configured pre-request plugins unless
``--no-dispatch-accounting`` is given; the reasoning and the measurements behind it are
in ``epp.datalayer.dispatch``. It reads the prefix match through the cycle-state key the
prefix producer owns, so it needs no other plugin's class.
"""

from __future__ import annotations

from epp.datalayer.dispatch import account_dispatch
from epp.framework.attributes import prefix_match, request_chars_per_token
from epp.framework.plugin import BasePlugin, TypedName
from epp.framework.scheduling import CycleState, SchedulingResult
from epp.requests.types import InferenceRequest

__all__ = ["DispatchAccounting"]


class DispatchAccounting(BasePlugin):
    TYPE = "dispatch-accounting"

    def __init__(self, name: str = TYPE) -> None:
        # Built by the director, not the registry: it takes no parameters and no handle.
        self.typed_name = TypedName(self.TYPE, name)
        self.params = None

    def pre_request(self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult) -> None:
        primary = result.primary.endpoints[0]
        cached = prefix_match(cycle).cached_tokens(primary.name)
        account_dispatch(primary, len(request.prompt) or request.size_bytes, cached,
                         chars_per_token=request_chars_per_token(request))
