"""Capacity recommendations for autoscalers (``epp autoscale``).

The metrics-source layer reads the model servers' load signals either straight from their
``/metrics`` pages (``podscrape``) or through a Prometheus server (``prometheus``), using
named, parameterised queries (``templates``, defaults in ``queries``), each source with its
own TTL cache (``cache``). ``sources`` holds the result types, the ``MetricsSource``
protocol and the registry of named sources. The saturation analyzer reads those results.
"""

__all__: list[str] = []
