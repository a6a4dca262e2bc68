"""The Python client's former import path, kept for existing users: it lives in the
`encoder_serve_client` package now (installable without the server)."""

from encoder_serve_client import (
    AsyncEncoderClient,
    Attention,
    Classification,
    Embeddings,
    EncoderClient,
    EncoderServeError,
    LabelScore,
    ModelInfo,
    RetryEvent,
    backoff_delay,
    parse_retry_after,
)

__all__ = [
    "AsyncEncoderClient",
    "Attention",
    "Classification",
    "Embeddings",
    "EncoderClient",
    "EncoderServeError",
    "LabelScore",
    "ModelInfo",
    "RetryEvent",
    "backoff_delay",
    "parse_retry_after",
]
