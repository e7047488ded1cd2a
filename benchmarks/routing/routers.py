"""The routers the routing benchmark compares.

``None`` means Envoy alone with the load-balancing policy in ``ENVOY_POLICIES``; a string
is the picker's ``EndpointPickerConfig`` (``""``: the built-in default).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ENVOY_POLICIES", "ROUTERS"]

_CONFIG = Path(__file__).resolve().parents[2] / "config"
_HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"

ENVOY_POLICIES = {"round-robin": "ROUND_ROBIN", "envoy-least-request": "LEAST_REQUEST", "envoy-random": "RANDOM"}

ROUTERS: dict[str, str | None] = {
    # Envoy alone: what you get without an endpoint picker.
    "round-robin": None,
    "envoy-least-request": None,
    "envoy-random": None,
    # GIE scorers for load only (queue 2, KV 2).
    "load-only": _HEAD + """plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
""",
    # GIE's default profile exactly (queue 2, KV 2, prefix 3).
    "gie-default": (_CONFIG / "gie-default.yaml").read_text(),
    # `epp serve` without a config: GIE's default plus prefill-load-scorer.
    "default": "",
    # The default plus LoRA affinity (config/lora.yaml).
    "default+lora": (_CONFIG / "lora.yaml").read_text(),
    # The default with the precise prefix-cache scorer fed by KV events (config/precise-prefix.yaml;
    # tokenizer and events socket filled in per run by precise.py).
    "precise": (_CONFIG / "precise-prefix.yaml").read_text(),
    # precise-only: the same (the shipped config has the precise scorer alone; older runs had
    # the approximate one beside it); precise+approx: with the approximate prefix-cache-scorer beside it.
    "precise-only": (_CONFIG / "precise-prefix.yaml").read_text(),
    "precise+approx": (_CONFIG / "precise-prefix.yaml").read_text(),
    # precise with chunkCacheBytes 0: every prompt encoded whole, as before chunk caching (issue 11, H4).
    "precise-wholeprompt": (_CONFIG / "precise-prefix.yaml").read_text(),
}
# Any picker router with "-2pickers" appended runs two picker processes behind one Envoy (pickers.py).
