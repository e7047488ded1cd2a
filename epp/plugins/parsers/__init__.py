"""In-tree parsers plugins."""
