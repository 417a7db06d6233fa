"""Inference engines behind one interface (:class:`InferenceEngine`)."""

from crosszone.dataplane.engines.base import (
    ChatMessage,
    Delta,
    GenerationRequest,
    InferenceEngine,
    Usage,
)

__all__ = ["ChatMessage", "Delta", "GenerationRequest", "InferenceEngine", "Usage"]
