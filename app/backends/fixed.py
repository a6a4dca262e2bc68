"""Benchmark only (`ENCODER_BACKEND=benchmark-fixed`): fixed outputs at once, no model run.

It lets `python -m loadtest.front_end` measure what the server around the engine
(HTTP, validation, tokenization, batching, serialization) sustains on its own. Every
answer is the same vector, so it must never serve real traffic; the server logs a
warning when it is chosen.
"""

from __future__ import annotations

import numpy as np


class FixedBackend:
    """Answers every row at once: states of ones, zero logits, or uniform attention."""

    name = "benchmark-fixed"
    device = "cpu"
    packed = False

    def __init__(self, output: str, width: int, layers: int = 1, heads: int = 1) -> None:
        self._output = output  # "last_hidden_state", "logits" or "attentions"
        self._width = width  # hidden size, or the number of labels for logits
        self._layers = layers
        self._heads = heads

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, tokens = inputs["input_ids"].shape
        if self._output == "logits":
            return {"logits": np.zeros((rows, self._width), dtype=np.float32)}
        if self._output == "attentions":
            shape = (rows, self._layers, self._heads, tokens, tokens)
            return {"attentions": np.full(shape, 1.0 / tokens, dtype=np.float32)}
        return {"last_hidden_state": np.ones((rows, tokens, self._width), dtype=np.float32)}
