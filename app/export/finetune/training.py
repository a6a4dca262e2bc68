"""`finetune`'s training loop, for every task: plain PyTorch (AdamW, transformers' linear
schedule with warm-up) with early stopping on a validation figure."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from app.export.finetune.config import FinetuneConfig
from app.export.finetune.data import PreparedData
from app.export.finetune.progress import TrainingProgress
from app.export.head_fit import adamw

EVAL_BATCH = 64


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_logits(
    model: torch.nn.Module, tokenizer: Any, texts: list[str], max_length: int
) -> np.ndarray:
    """Validation logits in the training process (eval mode, length-sorted batches)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    logits = np.zeros((len(texts), 0), dtype=np.float32)
    chunks: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(order), EVAL_BATCH):
            batch = [texts[i] for i in order[start : start + EVAL_BATCH]]
            inputs = tokenizer(
                batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            chunks.append(model(**inputs).logits.float().numpy())
    if chunks:
        stacked = np.concatenate(chunks)
        logits = np.empty_like(stacked)
        logits[order] = stacked
    model.train(was_training)
    return logits


@dataclass
class TrainingRecord:
    steps: int = 0
    examples: int = 0
    seconds: float = 0.0
    best_step: int = 0
    best_accuracy: float = -1.0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # per update

    def mean_loss(self, first: bool, steps: int = 10) -> float:
        chosen = self.losses[:steps] if first else self.losses[-steps:]
        return round(float(np.mean(chosen)), 4) if chosen else float("nan")


class LoopSettings(Protocol):
    """What `train_loop` reads of a tool's configuration (finetune's, compress's), read-only."""

    @property
    def epochs(self) -> int: ...

    @property
    def max_steps(self) -> int: ...  # 0: the epochs decide

    @property
    def batch_size(self) -> int: ...

    @property
    def learning_rate(self) -> float: ...

    @property
    def weight_decay(self) -> float: ...

    @property
    def warmup(self) -> float: ...

    @property
    def eval_every(self) -> int: ...  # 0: once per epoch

    @property
    def patience(self) -> int: ...

    @property
    def seed(self) -> int: ...


@dataclass(frozen=True)
class Checked:
    """One validation pass: the figure early stopping follows (higher is better), its name
    as shown, and the figures recorded in the history."""

    metric: float
    name: str
    figures: dict[str, float]


def train_loop(
    model: torch.nn.Module,
    items: int,
    batch_loss: Callable[[list[int]], torch.Tensor],
    validate: Callable[[], Checked],
    config: LoopSettings,
    record: TrainingRecord,
    *,
    stream: Any = None,
) -> None:
    """The one training loop of `finetune` (every task) and `compress`: AdamW with warm-up and
    linear decay over the budget (`epochs` over `items` training rows, or `max_steps`),
    batches of row indices in a seeded order, `batch_loss` of each; `validate` every
    `eval_every` updates (default once an epoch) and at the end; early stopping after
    `patience` passes without a better figure, and the best weights (those that train)
    restored at the end. Fills `record`."""
    steps_per_epoch = math.ceil(items / config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    eval_every = config.eval_every or steps_per_epoch
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = adamw((p for _, p in trainable), config.learning_rate, config.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, round(config.warmup * total), total)
    generator = torch.Generator().manual_seed(config.seed)
    best: dict[str, torch.Tensor] = {}
    waited = 0
    show = TrainingProgress(total, config.batch_size, stream=stream)
    start = time.perf_counter()
    model.train()
    try:
        while record.steps < total:
            for batch in torch.randperm(items, generator=generator).split(config.batch_size):
                rows = batch.tolist()
                loss = batch_loss(rows)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
                optimizer.step()
                schedule.step()
                record.steps += 1
                record.examples += len(rows)
                record.losses.append(loss.item())
                show.step(record.steps, len(rows), record.losses[-1])
                if record.steps % eval_every == 0 or record.steps == total:
                    checked = validate()
                    record.history.append({"step": record.steps, **checked.figures})
                    better = checked.metric > record.best_accuracy
                    if better:
                        record.best_accuracy, record.best_step = checked.metric, record.steps
                        waited = 0
                        best = {n: p.detach().clone() for n, p in trainable}
                    else:
                        waited += 1
                    show.write(
                        f"[eval] step {record.steps}: {checked.name} {checked.metric:.4f}"
                        + (" (best)" if better else f" (best {record.best_accuracy:.4f})")
                    )
                    if waited >= config.patience:
                        record.stopped_early = True
                        break
                if record.steps >= total:
                    break
            if record.stopped_early:
                break
    finally:
        show.close()
    record.seconds = round(time.perf_counter() - start, 1)
    with torch.no_grad():
        parameters = dict(trainable)
        for name, value in best.items():
            parameters[name].copy_(value)
    model.eval()


def train_classifier(
    model: torch.nn.Module,
    tokenizer: Any,
    data: PreparedData,
    config: FinetuneConfig,
    max_length: int,
    *,
    stream: Any = None,
) -> TrainingRecord:
    """`train_loop` on labelled texts (the model's own cross-entropy), early stopping on
    validation accuracy."""
    texts, labels = data.train.texts, torch.from_numpy(data.train.labels)

    def batch_loss(rows: list[int]) -> torch.Tensor:
        inputs = tokenizer(
            [texts[i] for i in rows],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        return model(**inputs, labels=labels[rows]).loss

    def validate() -> Checked:
        logits = model_logits(model, tokenizer, data.validation.texts, max_length)
        accuracy = float(np.mean(logits.argmax(axis=1) == data.validation.labels))
        return Checked(accuracy, "validation accuracy", {"validation_accuracy": round(accuracy, 4)})

    record = TrainingRecord()
    train_loop(model, len(texts), batch_loss, validate, config, record, stream=stream)
    return record
