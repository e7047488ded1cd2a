"""SLO-aware routing: the in-process latency predictor and the plugins that produce and consume its predictions."""

__all__: list[str] = []
