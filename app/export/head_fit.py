"""Training a `ClassifierHead` with PyTorch: a dropout MLP, AdamW and a cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from app.engine.models.heads import ClassifierHead

# Small data sets get more passes so that every head sees at least this many updates.
MIN_STEPS = 300


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

    def describe(self, epochs: int | None = None) -> str:
        """The head and its training; `epochs`: those run, when more than configured."""
        shape = f"MLP {self.hidden} ReLU" if self.hidden else "linear"
        if self.members > 1:
            shape = f"average of {self.members} x {shape} (merged into one layer)"
        return (
            f"{shape} on standardized features (folded into the first layer); input dropout "
            f"{self.input_dropout}, dropout {self.dropout}, AdamW lr {self.learning_rate} "
            f"cosine to 0, weight decay {self.weight_decay}, batch {self.batch_size}, "
            f"{epochs or self.epochs} epochs, seed {self.seed} (PyTorch)"
        )


def head_network(inputs: int, classes: int, config: HeadConfig) -> torch.nn.Sequential:
    """Dropout, then one hidden ReLU layer with dropout (or none), then the logits."""
    layers: list[torch.nn.Module] = [torch.nn.Dropout(config.input_dropout)]
    if config.hidden:
        hidden = [torch.nn.Linear(inputs, config.hidden), torch.nn.ReLU()]
        layers += [*hidden, torch.nn.Dropout(config.dropout)]
        inputs = config.hidden
    layers.append(torch.nn.Linear(inputs, classes))
    return torch.nn.Sequential(*layers)


def _as_head(network: torch.nn.Sequential, mean: np.ndarray, scale: np.ndarray) -> ClassifierHead:
    """The network's layers as a head on raw features: ((x - mean) / scale) @ W + b, rewritten."""
    linears = [layer for layer in network if isinstance(layer, torch.nn.Linear)]
    weights = [layer.weight.detach().numpy().T.astype(np.float64) for layer in linears]
    biases = [layer.bias.detach().numpy().astype(np.float64) for layer in linears]
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


def adamw(
    parameters: Iterable[torch.nn.Parameter], learning_rate: float, weight_decay: float
) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on weight matrices only: biases and LayerNorm
    scales (one dimension) are left undecayed, as BERT's recipe does."""
    parameters = list(parameters)
    return torch.optim.AdamW(
        [
            {"params": [p for p in parameters if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=learning_rate,
    )


@dataclass(frozen=True)
class HeadFit:
    """A trained head, and what its training did."""

    head: ClassifierHead
    epochs: int  # epochs run (per member): config.epochs, or more for small data (MIN_STEPS)
    # Per member: the epoch (from 1) whose weights were kept, the best on validation
    # (the first of equals), and its accuracy; the last epoch and None without validation.
    kept_epochs: tuple[int, ...]
    kept_accuracies: tuple[float | None, ...]


def fit_head(
    features: np.ndarray,
    labels: np.ndarray,
    classes: int,
    config: HeadConfig,
    report: Callable[[int, int, int, float | None], None] | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> HeadFit:
    """Train each member for a fixed budget (cosine to zero) and keep, of its epochs, the
    weights with the best accuracy on `validation` (features, labels), or the last ones
    without it (or when it is empty).

    `report(member, epoch, epochs, validation accuracy or None)` is called after each
    epoch; small data sets get more than `config.epochs` epochs, see MIN_STEPS.
    """
    mean = features.mean(axis=0).astype(np.float64)
    scale = features.std(axis=0).astype(np.float64) + 1e-6
    inputs = torch.from_numpy(((features - mean) / scale).astype(np.float32))
    targets = torch.from_numpy(labels.astype(np.int64))
    steps_per_epoch = math.ceil(len(labels) / config.batch_size)
    epochs = max(config.epochs, math.ceil(MIN_STEPS / steps_per_epoch))
    if validation is not None and len(validation[1]) == 0:
        validation = None
    heads: list[ClassifierHead] = []
    kept_epochs: list[int] = []
    kept_accuracies: list[float | None] = []
    for member in range(config.members):
        generator = torch.Generator().manual_seed(config.seed * 1000 + member)
        torch.manual_seed(config.seed * 1000 + member)  # initial weights and dropout masks
        network = head_network(features.shape[1], classes, config)
        optimizer = adamw(network.parameters(), config.learning_rate, config.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
        loss_function = torch.nn.CrossEntropyLoss()
        kept: ClassifierHead | None = None
        kept_epoch, kept_score = 0, -math.inf
        for epoch in range(epochs):
            network.train()
            order = torch.randperm(len(labels), generator=generator)
            for batch in order.split(config.batch_size):
                optimizer.zero_grad()
                loss_function(network(inputs[batch]), targets[batch]).backward()
                optimizer.step()
                schedule.step()
            network.eval()
            head = _as_head(network, mean, scale)
            score = None
            if validation is None:
                kept, kept_epoch = head, epoch + 1
            else:
                score = float(np.mean(head.logits(validation[0]).argmax(axis=1) == validation[1]))
                if score > kept_score:  # strictly: of equal scores the earliest is kept
                    kept, kept_epoch, kept_score = head, epoch + 1, score
            if report is not None:
                report(member, epoch, epochs, score)
        assert kept is not None  # epochs >= 1
        heads.append(kept)
        kept_epochs.append(kept_epoch)
        kept_accuracies.append(None if validation is None else kept_score)
    return HeadFit(_merge(heads), epochs, tuple(kept_epochs), tuple(kept_accuracies))
