"""Routing-quality benchmark: TTFT and throughput by router and workload, on simulated vLLM servers."""
