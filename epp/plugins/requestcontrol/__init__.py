"""Request-control plugins that are neither load tracking nor prefix caching."""

__all__: list[str] = []
