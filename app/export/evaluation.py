"""Classification scores recorded in `model.json`: accuracy, macro-F1, per class, confusion."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)


def classification_scores(
    labels: np.ndarray, predictions: np.ndarray, names: list[str]
) -> dict[str, Any]:
    """Scores of `predictions` against `labels` (indices into `names`), rounded to 4 places.

    `confusion_matrix[i][j]` counts examples of label i predicted as label j.
    """
    indices = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=indices, zero_division=0
    )
    per_class = {
        name: {
            "precision": round(float(precision[i]), 4),
            "recall": round(float(recall[i]), 4),
            "f1": round(float(f1[i]), 4),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    matrix = confusion_matrix(labels, predictions, labels=indices)
    return {
        "examples": len(labels),
        "accuracy": round(float(accuracy_score(labels, predictions)), 4),
        "macro_f1": round(float(f1.mean()), 4),  # macro: the unweighted mean over labels
        "per_class": per_class,
        "confusion_matrix": {
            "rows": "true label",
            "columns": "predicted label",
            "labels": list(names),
            "counts": matrix.astype(int).tolist(),
        },
    }
