"""Scores from logits or similarities: softmax, sigmoid, ranking, and zero-shot label scoring."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.engine.contract import PLACEHOLDER, LabelScore

# Zero-shot scores are softmax(cosine / temperature). 0.05 is the inverse of the scale
# (20) that sentence-transformers' contrastive loss trains all-MiniLM-style models with,
# so the scores are spread the way the model's similarities are calibrated.
ZERO_SHOT_TEMPERATURE = 0.05


def fill_template(template: str, label: str) -> str:
    """The hypothesis for `label`: plain text replacement (a label may hold any characters)."""
    return template.replace(PLACEHOLDER, label, 1)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def ranked(scores: np.ndarray, labels: list[str], top_k: int | None) -> list[list[LabelScore]]:
    """Per input, labels sorted by score (highest first), cut to `top_k`."""
    order = np.argsort(-scores, axis=-1, kind="stable")[:, :top_k]
    return [
        [LabelScore(labels[index], float(row_scores[index])) for index in row_order]
        for row_scores, row_order in zip(scores, order, strict=True)
    ]


def classifier_scores(logits: np.ndarray, *, raw: bool, multi_label: bool) -> np.ndarray:
    if raw:
        return logits
    return sigmoid(logits) if multi_label else softmax(logits)


def zero_shot_scores(similarities: np.ndarray, *, raw: bool, multi_label: bool) -> np.ndarray:
    """Cosine similarities (inputs x labels) to scores.

    raw: the cosines themselves; multi_label: each label on its own, the cosine clipped
    to [0, 1]; otherwise a softmax over the labels at ZERO_SHOT_TEMPERATURE.
    """
    if raw:
        return similarities
    if multi_label:
        return np.clip(similarities, 0.0, 1.0)
    return softmax(similarities / ZERO_SHOT_TEMPERATURE)
