"""encoder-serve's Python client: `from encoder_serve_client import EncoderClient`.

Installable on its own, without the server (`pip install ./encoder_serve_client`: it needs
only httpx); `app.client`, its former import path, re-exports it.
"""

from encoder_serve_client.client import (
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

__version__ = "0.1.0"

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
