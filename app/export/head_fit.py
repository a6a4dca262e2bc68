"""Training a `ClassifierHead` in numpy: a dropout MLP with AdamW and a cosine schedule."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from app.engine.heads import ClassifierHead

# Small data sets get more passes so that every head sees at least this many updates.
MIN_STEPS = 300
ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-8


@dataclass(frozen=True)
class HeadConfig:
    """Hyperparameters of the head and its training (defaults: chosen on SST-2 held-out)."""

    hidden: int = 1024  # ReLU units of the hidden layer; 0 trains a linear head
    members: int = 1  # independently seeded heads, averaged (merged into one wider layer)
    input_dropout: float = 0.2
    dropout: float = 0.5
    weight_decay: float = 0.05  # AdamW, decoupled, on weights only
    learning_rate: float = 1e-3  # peak; cosine-annealed to zero over the budget
    batch_size: int = 256
    epochs: int = 4
    held_out: float = 0.1  # share of the training file held out to measure the head
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden < 0 or self.members < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("hidden must be >= 0; members, epochs and batch size >= 1")
        if not 0.0 < self.held_out < 1.0:
            raise ValueError(f"held-out share must be between 0 and 1, got {self.held_out}")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.input_dropout < 1.0):
            raise ValueError("dropout rates must be in [0, 1)")

    def describe(self) -> str:
        shape = f"MLP {self.hidden} ReLU" if self.hidden else "linear"
        if self.members > 1:
            shape = f"average of {self.members} x {shape} (merged into one layer)"
        return (
            f"{shape} on standardized features (folded into the first layer); input dropout "
            f"{self.input_dropout}, dropout {self.dropout}, AdamW lr {self.learning_rate} "
            f"cosine to 0, weight decay {self.weight_decay}, batch {self.batch_size}, "
            f"{self.epochs} epochs, seed {self.seed}"
        )


def _softmax_gradient(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """d(mean cross-entropy)/d(logits)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    probabilities[np.arange(len(labels)), labels] -= 1.0
    return probabilities / len(labels)


class _Trainer:
    """One dense network (at most one hidden layer) and its AdamW state."""

    def __init__(self, sizes: list[int], config: HeadConfig, rng: np.random.Generator) -> None:
        self.config, self.rng = config, rng
        # PyTorch's default initialisation for linear layers: U(-1/sqrt(fan_in), +1/sqrt(fan_in)).
        bounds = [1.0 / math.sqrt(fan_in) for fan_in in sizes[:-1]]
        self.params: list[np.ndarray] = [
            rng.uniform(-b, b, size=shape).astype(np.float32)
            for b, (n_in, n_out) in zip(bounds, itertools.pairwise(sizes), strict=True)
            for shape in ((n_in, n_out), (n_out,))
        ]
        self.moments: list[np.ndarray] = [np.zeros_like(p) for p in self.params]
        self.squares: list[np.ndarray] = [np.zeros_like(p) for p in self.params]
        self.steps = 0

    def _dropout(self, x: np.ndarray, rate: float) -> np.ndarray:
        if rate <= 0:
            return x
        keep = self.rng.random(x.shape, dtype=np.float32) >= rate
        return x * keep / np.float32(1.0 - rate)

    def gradients(self, x: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
        x = self._dropout(x, self.config.input_dropout)
        if len(self.params) == 2:
            weight, bias = self.params
            grad = _softmax_gradient(x @ weight + bias, labels)
            return [x.T @ grad, grad.sum(axis=0)]
        w1, b1, w2, b2 = self.params
        pre = x @ w1 + b1
        hidden = self._dropout(np.maximum(pre, 0.0), self.config.dropout)
        grad = _softmax_gradient(hidden @ w2 + b2, labels)
        back = (grad @ w2.T) * (hidden > 0)  # dropped and inactive units pass no gradient
        if self.config.dropout > 0:
            back /= np.float32(1.0 - self.config.dropout)
        return [x.T @ back, back.sum(axis=0), hidden.T @ grad, grad.sum(axis=0)]

    def step(self, grads: list[np.ndarray], rate: float) -> None:
        self.steps += 1
        beta1, beta2 = ADAM_BETAS
        correction1 = 1.0 - beta1**self.steps
        correction2 = 1.0 - beta2**self.steps
        for index, (param, grad) in enumerate(zip(self.params, grads, strict=True)):
            if param.ndim == 2:
                param *= np.float32(1.0 - rate * self.config.weight_decay)
            self.moments[index] = beta1 * self.moments[index] + (1 - beta1) * grad
            self.squares[index] = beta2 * self.squares[index] + (1 - beta2) * grad * grad
            update = (self.moments[index] / correction1) / (
                np.sqrt(self.squares[index] / correction2) + ADAM_EPSILON
            )
            param -= (rate * update).astype(np.float32)


def _fold_standardization(
    params: list[np.ndarray], mean: np.ndarray, scale: np.ndarray
) -> ClassifierHead:
    """The layers as a head on raw features: ((x - mean) / scale) @ W + b, rewritten."""
    weights = [p for p in params if p.ndim == 2]
    biases = [p for p in params if p.ndim == 1]
    biases[0] = biases[0] - (mean / scale) @ weights[0]
    weights[0] = weights[0] / scale[:, None]
    return ClassifierHead(
        tuple(w.astype(np.float32) for w in weights), tuple(b.astype(np.float32) for b in biases)
    )


def _merge(heads: list[ClassifierHead]) -> ClassifierHead:
    """One head whose logits are the members' mean: hidden layers side by side."""
    if len(heads) == 1:
        return heads[0]
    if len(heads[0].weights) == 1:
        return ClassifierHead(
            (np.mean([h.weights[0] for h in heads], axis=0),),
            (np.mean([h.biases[0] for h in heads], axis=0),),
        )
    share = np.float32(1.0 / len(heads))
    return ClassifierHead(
        (
            np.concatenate([h.weights[0] for h in heads], axis=1),
            np.concatenate([h.weights[1] for h in heads], axis=0) * share,
        ),
        (
            np.concatenate([h.biases[0] for h in heads]),
            np.mean([h.biases[1] for h in heads], axis=0),
        ),
    )


def fit_head(
    features: np.ndarray,
    labels: np.ndarray,
    classes: int,
    config: HeadConfig,
    report: Callable[[int, int, int, ClassifierHead], None] | None = None,
) -> ClassifierHead:
    """Train for a fixed budget (cosine to zero) and return the final weights.

    `report(member, epoch, epochs, head)` is called after each epoch (e.g. to show held-out
    accuracy); small data sets get more than `config.epochs` epochs, see MIN_STEPS.
    """
    mean = features.mean(axis=0)
    scale = features.std(axis=0) + 1e-6
    inputs = ((features - mean) / scale).astype(np.float32)
    sizes = [features.shape[1], *([config.hidden] if config.hidden else []), classes]
    steps_per_epoch = math.ceil(len(labels) / config.batch_size)
    epochs = max(config.epochs, math.ceil(MIN_STEPS / steps_per_epoch))
    total = epochs * steps_per_epoch
    heads = []
    for member in range(config.members):
        rng = np.random.default_rng([config.seed, member])
        trainer = _Trainer(sizes, config, rng)
        for epoch in range(epochs):
            order = rng.permutation(len(labels))
            for begin in range(0, len(order), config.batch_size):
                batch = order[begin : begin + config.batch_size]
                progress = trainer.steps / total
                rate = config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
                trainer.step(trainer.gradients(inputs[batch], labels[batch]), rate)
            if report is not None:
                report(member, epoch, epochs, _fold_standardization(trainer.params, mean, scale))
        heads.append(_fold_standardization(trainer.params, mean, scale))
    return _merge(heads)
