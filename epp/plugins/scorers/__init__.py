"""In-tree scorers plugins."""

__all__: list[str] = []
