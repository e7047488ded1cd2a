"""In-tree pickers plugins."""

__all__: list[str] = []
