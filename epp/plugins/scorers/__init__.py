"""In-tree scorers plugins."""
