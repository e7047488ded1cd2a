"""The configuration used when none is given: the Go EPP's built-in default.

Queue depth (weight 2), KV-cache utilisation (2) and prefix-cache affinity (3), with the
vLLM metrics scraped by ``metrics-data-source`` → ``core-metrics-extractor``.
"""

__all__ = ["DEFAULT_CONFIG"]

DEFAULT_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
"""
