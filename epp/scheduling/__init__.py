"""Running scheduling profiles: filters → weighted scorers → picker, per profile."""

__all__: list[str] = []
