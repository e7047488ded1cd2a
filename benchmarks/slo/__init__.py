"""SLO-aware routing benchmarks: predictor model choice (``predictor_models``) and routing attainment."""
