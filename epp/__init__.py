"""Endpoint picker for LLM inference: an Envoy ext_proc server that routes OpenAI requests."""

__all__ = ["__version__"]

__version__ = "0.1.0"
