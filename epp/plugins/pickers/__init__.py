"""In-tree pickers plugins."""
