"""In-flight load tracking (requests and estimated tokens per endpoint)."""

__all__: list[str] = []
