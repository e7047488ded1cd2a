"""In-tree datalayer plugins."""

__all__: list[str] = []
