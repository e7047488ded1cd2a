"""The configuration used when none is given.

The Go EPP's default profile (queue depth 2, KV-cache utilisation 2, prefix-cache
affinity 3) plus two plugins of ours, each fixing a failure of that profile measured in
``benchmarks/routing`` and ``tests/e2e``:

- ``prefill-load-scorer`` (3): GIE's profile cannot see the prefill work already routed to
  an endpoint; on unique long prompts it was 1.6x worse than round-robin at p90 TTFT.
- ``load-imbalance-filter``: with GIE's weights a full prefix match always beats a long
  queue, so a burst sharing one prefix piled 24/0/0 onto one replica.

GIE's exact default is ``config/gie-default.yaml``; configs written for the Go EPP load
and run unchanged.
"""

__all__ = ["DEFAULT_CONFIG"]

DEFAULT_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: load-imbalance-filter
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: prefill-load-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: load-imbalance-filter
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: prefill-load-scorer
    weight: 3
"""
