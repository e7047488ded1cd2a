"""The routers compared by the routing benchmark, as picker configs (None: Envoy round-robin)."""

from __future__ import annotations

__all__ = ["ROUTERS"]

_HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def _config(plugins: list[str], profile: list[tuple[str, float | None]]) -> str:
    lines = [_HEAD, "plugins:\n"]
    lines += [f"- type: {p}\n" for p in plugins]
    lines += ["schedulingProfiles:\n- name: default\n  plugins:\n"]
    for ref, weight in profile:
        lines.append(f"  - pluginRef: {ref}\n" + (f"    weight: {weight:g}\n" if weight is not None else ""))
    return "".join(lines)


ROUTERS: dict[str, str | None] = {
    # Envoy alone, ROUND_ROBIN over the simulators: what you get without an endpoint picker.
    "round-robin": None,
    # GIE scorers for load only.
    "load-only": _config(["queue-scorer", "kv-cache-utilization-scorer"],
                         [("queue-scorer", 2), ("kv-cache-utilization-scorer", 2)]),
    # The built-in default profile (what `epp serve` runs without --config-file).
    "default": "",
    # GIE's default profile exactly (queue 2, KV 2, prefix 3), without our load guard.
    "gie-default": _config(["queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer"],
                           [("queue-scorer", 2), ("kv-cache-utilization-scorer", 2), ("prefix-cache-scorer", 3)]),
    # The default plus LoRA affinity, for adapter-heavy pools.
    "default+lora": _config(["load-imbalance-filter", "queue-scorer", "kv-cache-utilization-scorer",
                             "prefix-cache-scorer", "lora-affinity-scorer"],
                            [("load-imbalance-filter", None), ("queue-scorer", 2), ("kv-cache-utilization-scorer", 2),
                             ("prefix-cache-scorer", 3), ("lora-affinity-scorer", 2)]),
}
