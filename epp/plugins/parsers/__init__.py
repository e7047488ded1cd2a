"""In-tree parsers plugins."""

__all__: list[str] = []
