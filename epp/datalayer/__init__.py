"""Endpoints, the pool that holds them, and the background collector that hydrates them."""

__all__: list[str] = []
