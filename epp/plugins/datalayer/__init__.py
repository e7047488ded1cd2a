"""In-tree datalayer plugins."""
