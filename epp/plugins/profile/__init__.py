"""In-tree profile plugins."""

__all__: list[str] = []
