"""Operator tools: ``epp snapshot`` (what a running picker sees) and ``epp recipe`` (a config for a setup).

``snapshot`` captures endpoints, metrics, configuration, versions and flow control from a
picker's admin API, or the endpoints of a pool file, as a versioned document.
``recipe`` builds an ``EndpointPickerConfig`` from an embedded base and overlays matched
against a described setup (or one read from a snapshot).
"""

__all__: list[str] = []
