"""Running scheduling profiles: filters → weighted scorers → picker, per profile."""
