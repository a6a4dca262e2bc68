"""`finetune`'s data: every file read and checked, and the validation split made, up front."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.export.finetune.config import DataFormat
from app.export.labelled_data import (
    LabelledDataError,
    LabelledTexts,
    held_out_split,
    require_every_class,
)


@dataclass(frozen=True)
class PreparedData:
    train: LabelledTexts
    validation: LabelledTexts
    test: LabelledTexts | None
    dropped: int  # training rows left out: copies or sub-phrases of validation rows

    def clipped(self, max_length: int) -> PreparedData:
        """Every text cut to what `max_length` tokens can hold, before any is tokenized."""
        test = None if self.test is None else self.test.clipped(max_length)
        return PreparedData(
            self.train.clipped(max_length), self.validation.clipped(max_length), test, self.dropped
        )


def prepare_data(
    data: Path,
    labels: list[str],
    data_format: DataFormat,
    *,
    validation_share: float,
    seed: int,
    eval_data: Path | None = None,
    test_data: Path | None = None,
) -> PreparedData:
    """Every file read and checked, and the validation split made, before any training.

    Without `eval_data`, a stratified share of `data` is held out (whole sentences for
    SST-style phrase data, see `held_out_split`).
    """
    if len(labels) < 2 or len(set(labels)) != len(labels) or not all(labels):
        raise LabelledDataError(f"--labels: need at least two distinct, non-empty labels: {labels}")
    everything = data_format.read(data, labels)
    require_every_class(everything, labels, data)
    test = data_format.read(test_data, labels) if test_data else None
    if eval_data is not None:
        validation = data_format.read(eval_data, labels)
        return PreparedData(everything, validation, test, 0)
    train_rows, held_rows = held_out_split(
        everything.texts, everything.labels, validation_share, seed
    )
    if len(held_rows) == 0 or len(train_rows) == 0:
        raise LabelledDataError(f"{data}: too few rows to hold out a validation share")
    train = _subset(everything, train_rows)
    require_every_class(train, labels, data)
    dropped = len(everything.texts) - len(train_rows) - len(held_rows)
    return PreparedData(train, _subset(everything, held_rows), test, dropped)


def _subset(data: LabelledTexts, rows: np.ndarray) -> LabelledTexts:
    return LabelledTexts([data.texts[i] for i in rows], data.labels[rows])
