"""Turn the config's ``flowControl`` section into the controller's settings.

Defaults follow the Go EPP (``flowcontrol/registry/config.go``): a band holds at most
1 GB of request bodies and any number of requests; global limits are off unless set; a
band without policies uses ``global-strict-fairness-policy`` and ``fcfs-ordering-policy``;
the usage limit is ``static-usage-limit-policy`` (ceiling 1.0). A priority that has no
configured band gets one built from ``defaultPriorityBand`` when its first request comes.
``defaultRequestTTL`` unset or 0 means a request waits until its client gives up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from epp.config.schema import FlowControlSpec, PriorityBandSpec
from epp.flowcontrol.controller import BandSettings, FlowControlSettings
from epp.flowcontrol.types import FairnessPolicy, OrderingPolicy, UsageLimitPolicy

__all__ = ["DEFAULT_BAND_MAX_BYTES", "build_flow_control"]

DEFAULT_BAND_MAX_BYTES = 1_000_000_000
DEFAULT_FAIRNESS_POLICY = "global-strict-fairness-policy"
DEFAULT_ORDERING_POLICY = "fcfs-ordering-policy"
DEFAULT_USAGE_LIMIT_POLICY = "static-usage-limit-policy"

# (reference, the protocol it must implement, the field that named it) → the plugin.
Resolve = Callable[[str, type, str], Any]


def build_flow_control(spec: FlowControlSpec | None, resolve: Resolve) -> FlowControlSettings:
    spec = spec or FlowControlSpec()
    where = "flowControl"
    template = spec.default_priority_band or PriorityBandSpec(priority=0)
    default_band = _band(template, None, resolve, f"{where}.defaultPriorityBand")
    bands = {band.priority: _band(band, default_band, resolve, f"{where}.priorityBands[{i}]")
             for i, band in enumerate(spec.priority_bands)}
    usage_ref = spec.usage_limit_policy_plugin_ref or DEFAULT_USAGE_LIMIT_POLICY
    usage_limit = resolve(usage_ref, UsageLimitPolicy, f"{where}.usageLimitPolicyPluginRef")
    ttl = spec.default_request_ttl
    return FlowControlSettings(
        bands=bands, default_band=default_band, usage_limit=usage_limit,
        max_bytes=spec.max_bytes or 0, max_requests=spec.max_requests or 0,
        default_ttl=ttl if ttl else math.inf,
    )


def _band(spec: PriorityBandSpec, inherit: BandSettings | None, resolve: Resolve, where: str) -> BandSettings:
    """A configured band; what it leaves out comes from the default band, then the Go defaults."""
    fairness: FairnessPolicy = (resolve(spec.fairness_policy_ref, FairnessPolicy, f"{where}.fairnessPolicyRef")
                                if spec.fairness_policy_ref else inherit.fairness if inherit
                                else resolve(DEFAULT_FAIRNESS_POLICY, FairnessPolicy, f"{where}.fairnessPolicyRef"))
    ordering: OrderingPolicy = (resolve(spec.ordering_policy_ref, OrderingPolicy, f"{where}.orderingPolicyRef")
                                if spec.ordering_policy_ref else inherit.ordering if inherit
                                else resolve(DEFAULT_ORDERING_POLICY, OrderingPolicy, f"{where}.orderingPolicyRef"))
    max_bytes = spec.max_bytes if spec.max_bytes is not None else (
        inherit.max_bytes if inherit else DEFAULT_BAND_MAX_BYTES)
    max_requests = spec.max_requests if spec.max_requests is not None else (inherit.max_requests if inherit else 0)
    return BandSettings(priority=spec.priority, max_bytes=max_bytes, max_requests=max_requests,
                        fairness=fairness, ordering=ordering)
