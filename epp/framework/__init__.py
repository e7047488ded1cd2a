"""The plugin framework: extension-point contracts, parameters, registry and scheduler."""

__all__: list[str] = []
