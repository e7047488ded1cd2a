"""Approximate prefix-cache routing: hashing, the per-endpoint index and its plugins."""

__all__: list[str] = []
