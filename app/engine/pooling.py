"""Pooling token states into one vector per input, and vector post-processing."""

from __future__ import annotations

import numpy as np

from app.engine.manifest import Pooling


def pool(hidden: np.ndarray, attention_mask: np.ndarray, mode: Pooling) -> np.ndarray:
    """(batch, tokens, hidden) states -> (batch, hidden) vectors, ignoring padding."""
    if mode == "cls":
        return hidden[:, 0, :]
    mask = attention_mask[:, :, None].astype(hidden.dtype)
    summed = (hidden * mask).sum(axis=1)
    counts = np.maximum(mask.sum(axis=1), 1e-9)
    return summed / counts


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Scale rows to unit L2 length (a zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
