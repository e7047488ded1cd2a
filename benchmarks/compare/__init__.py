"""Side by side: the picker behind Envoy against sglang-router, vllm-router and Envoy round-robin."""
