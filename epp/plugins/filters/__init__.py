"""In-tree filter plugins."""

__all__: list[str] = []
