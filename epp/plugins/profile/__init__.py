"""In-tree profile plugins."""
