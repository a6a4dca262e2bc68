"""`compress`'s data: the texts (and their labels, when the file has them) read and checked,
and the validation split made, before any training.

Unlabelled text is enough to distil: a `.txt` file (one text a line), or a CSV, TSV or JSON
Lines file without the label column. A classifier's file with the label column is read as
`finetune` reads it (names or numbers), and the true labels are mixed into the loss.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.export.finetune.config import DataFormat
from app.export.labelled_data import (
    JSON_LINES_SUFFIXES,
    TEXT_COLUMNS,
    LabelledDataError,
    clip_texts,
    held_out_split,
)


@dataclass(frozen=True)
class Texts:
    texts: list[str]
    labels: np.ndarray | None  # label indices in the teacher's order; None: unlabelled

    def subset(self, rows: np.ndarray) -> Texts:
        labels = None if self.labels is None else self.labels[rows]
        return Texts([self.texts[i] for i in rows], labels)

    def clipped(self, max_length: int) -> Texts:
        return Texts(clip_texts(self.texts, max_length), self.labels)


@dataclass(frozen=True)
class CompressData:
    train: Texts
    validation: Texts
    test: Texts | None
    dropped: int  # training rows left out: copies or sub-phrases of validation rows

    def clipped(self, max_length: int) -> CompressData:
        test = None if self.test is None else self.test.clipped(max_length)
        return CompressData(
            self.train.clipped(max_length), self.validation.clipped(max_length), test, self.dropped
        )


def _header(path: Path) -> list[str]:
    """The column names of a CSV/TSV, or the keys of a JSON Lines file's first object."""
    with path.open(encoding="utf-8") as file:
        first = file.readline()
    if path.suffix.lower() in JSON_LINES_SUFFIXES:
        try:
            row = json.loads(first)
        except ValueError:
            raise LabelledDataError(f"{path}:1: not a JSON object") from None
        return list(row) if isinstance(row, dict) else []
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    return next(csv.reader([first], delimiter=delimiter), [])


def _unlabelled(path: Path, header: list[str], data_format: DataFormat) -> list[str]:
    columns = data_format.text_columns or [next((c for c in TEXT_COLUMNS if c in header), "")]
    missing = [column for column in columns if column not in header]
    if missing:
        raise LabelledDataError(
            f"{path}: no text column {', '.join(repr(c) for c in missing) or 'found'} "
            f"(columns: {', '.join(header)}; name them with --text-column)"
        )
    texts = []
    with path.open(encoding="utf-8", newline="") as file:
        rows: Iterable[Any]
        if path.suffix.lower() in JSON_LINES_SUFFIXES:
            rows = (json.loads(line) for line in file if line.strip())
        else:
            rows = csv.DictReader(file, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        for number, row in enumerate(rows, start=2):
            if not isinstance(row, dict) or not all(isinstance(row.get(c), str) for c in columns):
                raise LabelledDataError(f"{path}:{number}: a text column is missing or not text")
            texts.append(" ".join(row[c] for c in columns))
    return texts


def read_texts(path: Path, labels: list[str], data_format: DataFormat) -> Texts:
    """The texts of `path`, with their labels when the teacher is a classifier (`labels`)
    and the file has the label column. Bad input raises `LabelledDataError` naming the file."""
    if not path.is_file():
        raise LabelledDataError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".txt":
            texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            found = Texts([text for text in texts if text], None)
        else:
            header = _header(path)
            if labels and data_format.label_column in header:
                read = data_format.read(path, labels)
                found = Texts(read.texts, read.labels)
            else:
                found = Texts(_unlabelled(path, header, data_format), None)
    except UnicodeDecodeError as error:
        raise LabelledDataError(f"{path}: not UTF-8 text ({error.reason})") from None
    except (ValueError, csv.Error) as error:
        if isinstance(error, LabelledDataError):
            raise
        raise LabelledDataError(f"{path}: {error}") from None
    if not found.texts or not any(text.strip() for text in found.texts):
        raise LabelledDataError(f"{path}: no texts")
    return found


def prepare_data(
    data: Path,
    labels: list[str],
    data_format: DataFormat,
    *,
    validation_share: float,
    seed: int,
    eval_data: Path | None = None,
    test_data: Path | None = None,
) -> CompressData:
    """Every file read and checked, and the validation split made (whole sentences for
    SST-style phrase data, as `finetune` holds them out), before any training."""
    everything = read_texts(data, labels, data_format)
    test = read_texts(test_data, labels, data_format) if test_data else None
    if eval_data is not None:
        return CompressData(everything, read_texts(eval_data, labels, data_format), test, 0)
    strata = everything.labels
    if strata is None:
        strata = np.zeros(len(everything.texts), dtype=np.int64)
    train_rows, held_rows = held_out_split(everything.texts, strata, validation_share, seed)
    if len(held_rows) == 0 or len(train_rows) == 0:
        raise LabelledDataError(f"{data}: too few rows to hold out a validation share")
    dropped = len(everything.texts) - len(train_rows) - len(held_rows)
    return CompressData(everything.subset(train_rows), everything.subset(held_rows), test, dropped)
