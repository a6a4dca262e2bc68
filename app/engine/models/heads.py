"""Small classification heads on frozen embeddings: a numpy MLP (or linear layer) stored as .npz."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ClassifierHead:
    """Dense layers with ReLU between them; the last layer's outputs are the logits.

    Input: the base model's pooled vector, L2-normalized (the same features it was
    trained on). A single layer is logistic regression.
    """

    weights: tuple[np.ndarray, ...]  # (in, out) per layer
    biases: tuple[np.ndarray, ...]  # (out,) per layer

    def __post_init__(self) -> None:
        if not self.weights or len(self.weights) != len(self.biases):
            raise ValueError("a head needs one bias per weight matrix, and at least one layer")
        for w, nxt in zip(self.weights, self.weights[1:], strict=False):
            if w.shape[1] != nxt.shape[0]:
                raise ValueError(f"layer shapes do not chain: {w.shape} then {nxt.shape}")

    @property
    def input_size(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def output_size(self) -> int:
        return int(self.weights[-1].shape[1])

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(batch, input_size) -> (batch, labels)."""
        x = features.astype(np.float32, copy=False)
        last = len(self.weights) - 1
        for index, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = x @ w + b
            if index < last:
                x = np.maximum(x, 0.0)
        return x

    def save(self, path: Path) -> None:
        arrays = {f"w{i}": w.astype(np.float32) for i, w in enumerate(self.weights)}
        arrays |= {f"b{i}": b.astype(np.float32) for i, b in enumerate(self.biases)}
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> ClassifierHead:
        with np.load(path) as data:
            layers = sum(1 for key in data.files if key.startswith("w"))
            return cls(
                tuple(data[f"w{i}"] for i in range(layers)),
                tuple(data[f"b{i}"] for i in range(layers)),
            )
