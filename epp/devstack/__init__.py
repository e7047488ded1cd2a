"""The local stack behind ``make run``: simulators, the picker and real Envoy on loopback."""

__all__: list[str] = []
