"""`compress`'s training loop: distillation from the teacher's outputs (computed once), run by
`finetune`'s one training loop (optimiser, schedule, progress, early stopping keeping the
best weights).

Classifiers learn the teacher's logits softened by a temperature (KL divergence, scaled by
T² as in Hinton et al.), mixed with cross-entropy on the true labels when the file has them.
Embedding students learn the teacher's pooled vectors (1 - cosine, or MSE)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as functional

from app.export.compress.config import CompressConfig
from app.export.compress.data import Texts
from app.export.finetune import TrainingRecord, model_logits
from app.export.finetune.training import Checked, train_loop

EVAL_BATCH = 64


@dataclass(frozen=True)
class Targets:
    """The teacher's outputs for the training and validation texts, row for row."""

    train: np.ndarray
    validation: np.ndarray


def mean_pooled(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The served embedding: the last hidden state averaged over the real tokens."""
    hidden = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def student_vectors(
    model: torch.nn.Module, tokenizer: Any, texts: list[str], max_length: int
) -> np.ndarray:
    """An embedding student's pooled vectors in the training process (eval mode)."""
    was_training = model.training
    model.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), EVAL_BATCH):
            inputs = tokenizer(
                texts[start : start + EVAL_BATCH],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            chunks.append(mean_pooled(model, inputs).float().numpy())
    model.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


def mean_cosine(found: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two matrices."""
    dot = (found * expected).sum(axis=1)
    norms = np.linalg.norm(found, axis=1) * np.linalg.norm(expected, axis=1)
    return np.asarray(dot / np.maximum(norms, 1e-12))


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None,
    config: CompressConfig,
    embedding: bool,
) -> torch.Tensor:
    if embedding:
        if config.vector_loss == "mse":
            return functional.mse_loss(student, teacher)
        return (1.0 - functional.cosine_similarity(student, teacher, dim=-1)).mean()
    temperature = config.temperature
    soft = functional.kl_div(
        functional.log_softmax(student / temperature, dim=-1),
        functional.softmax(teacher / temperature, dim=-1),
        reduction="batchmean",
    ) * (temperature**2)
    if labels is None or config.label_weight == 0.0:
        return soft
    hard = functional.cross_entropy(student, labels)
    return (1.0 - config.label_weight) * soft + config.label_weight * hard


def validation_score(
    model: torch.nn.Module,
    tokenizer: Any,
    validation: Texts,
    targets: np.ndarray,
    max_length: int,
    embedding: bool,
) -> float:
    """What early stopping watches (higher is better): an embedding student's mean cosine to
    the teacher; a classifier's accuracy on the true labels, else its agreement with the
    teacher's choices."""
    if embedding:
        found = student_vectors(model, tokenizer, validation.texts, max_length)
        return float(mean_cosine(found, targets).mean())
    predicted = model_logits(model, tokenizer, validation.texts, max_length).argmax(axis=1)
    truth = validation.labels if validation.labels is not None else targets.argmax(axis=1)
    return float(np.mean(predicted == truth))


def distil(
    model: torch.nn.Module,
    tokenizer: Any,
    train: Texts,
    validation: Texts,
    targets: Targets,
    config: CompressConfig,
    max_length: int,
    *,
    embedding: bool,
    stream: Any = None,
) -> TrainingRecord:
    """`finetune`'s training loop (`train_loop`) on the distillation loss; early stopping
    on the validation score, the best weights restored. The record's `best_accuracy`
    holds the best validation score."""
    texts = train.texts
    labels = None if train.labels is None else torch.from_numpy(train.labels)
    teacher = torch.from_numpy(targets.train)
    what = "cosine to the teacher" if embedding else "validation accuracy"
    if not embedding and validation.labels is None:
        what = "agreement with the teacher"

    def batch_loss(rows: list[int]) -> torch.Tensor:
        inputs = tokenizer(
            [texts[i] for i in rows],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        output = mean_pooled(model, inputs) if embedding else model(**inputs).logits
        truth = None if labels is None else labels[rows]
        return distillation_loss(output, teacher[rows], truth, config, embedding)

    def validate() -> Checked:
        score = validation_score(
            model, tokenizer, validation, targets.validation, max_length, embedding
        )
        return Checked(score, what, {"validation": round(score, 4)})

    record = TrainingRecord()
    train_loop(model, len(texts), batch_loss, validate, config, record, stream=stream)
    return record
