"""In-tree filter plugins."""
