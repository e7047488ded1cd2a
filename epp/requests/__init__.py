"""Parsing OpenAI request bodies into a typed ``InferenceRequest``, once per request."""

from epp.requests.types import ApiKind, InferenceRequest

__all__ = ["ApiKind", "InferenceRequest"]
