"""Benchmarks: run with ``python -m benchmarks.<name>`` (see README, "Benchmarks")."""
