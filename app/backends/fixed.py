"""Benchmark only (`ENCODER_BACKEND=benchmark-fixed`): fixed outputs at once, no model run;
`benchmark-sim` answers the same after a simulated accelerator's time (`SimulatedBackend`).

It lets `python -m loadtest.front_end` measure what the server around the engine
(HTTP, validation, tokenization, batching, serialization) sustains on its own. Every
answer is the same vector, so it must never serve real traffic; the server logs a
warning when it is chosen.
"""

from __future__ import annotations

import time

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


class SimulatedBackend(FixedBackend):
    """Benchmark only (`ENCODER_BACKEND=benchmark-sim`): an accelerator simulated on CPU.

    Each pass waits `pass_us + token_us x padded tokens` microseconds, as a device would
    run it, then answers like `FixedBackend`. The wait is a sleep: it holds no core and
    releases the GIL (the batcher runs passes in an executor thread), so the server's own
    CPU work goes on meanwhile, as beside a real GPU. Its `device` is neither "cpu" nor
    "cuda": batches run whole and a model gets one instance, as on a GPU.
    """

    name = "benchmark-sim"
    device = "sim"

    def __init__(
        self,
        output: str,
        width: int,
        layers: int = 1,
        heads: int = 1,
        *,
        pass_us: float,
        token_us: float,
    ) -> None:
        super().__init__(output, width, layers, heads)
        self.pass_us = pass_us
        self.token_us = token_us

    def pass_seconds(self, padded_tokens: int) -> float:
        """How long a pass of `padded_tokens` (rows x tokens) waits."""
        return (self.pass_us + self.token_us * padded_tokens) / 1e6

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self.pass_seconds(inputs["input_ids"].size))
        return super().run(inputs)
