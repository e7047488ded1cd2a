"""Autoscaler benchmark: recommended replicas against a load ramp (``python -m benchmarks.autoscale.run``)."""
