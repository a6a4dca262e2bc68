"""`finetune --task rerank/embedding`'s data: a file of (query, positive) pairs, optionally
with given negatives, read and checked, and a held-out part split off with no leak.

The same files as the classifier's (CSV/TSV with a header row, or JSON Lines), read with
the same delimiter and error rules (app/export/labelled_data.py); every problem is a
`LabelledDataError` naming the file and line.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.export.labelled_data import (
    JSON_LINES_SUFFIXES,
    LabelledDataError,
    _checked,
    _delimiter,
    clip_texts,
)

# Held-out queries needed to measure retrieval at all; R@10 wants more, but a small file
# still gets a figure (and a line saying how few queries it rests on).
MIN_HELD_OUT = 2
MIN_TRAINING = 2


@dataclass(frozen=True)
class PairFormat:
    """Which columns (JSON Lines: keys) hold the query, its positive and given negatives."""

    query_column: str = "query"
    positive_column: str = "positive"
    negative_columns: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Pairs:
    queries: list[str]
    positives: list[str]
    negatives: list[list[str]]  # given negatives of each pair (empty without such columns)

    def __len__(self) -> int:
        return len(self.queries)

    def subset(self, rows: np.ndarray | list[int]) -> Pairs:
        return Pairs(
            [self.queries[i] for i in rows],
            [self.positives[i] for i in rows],
            [self.negatives[i] for i in rows],
        )

    def clipped(self, max_length: int) -> Pairs:
        """Every text cut to what `max_length` tokens can hold, before any is tokenized."""
        return Pairs(
            clip_texts(self.queries, max_length),
            clip_texts(self.positives, max_length),
            [clip_texts(given, max_length) for given in self.negatives],
        )


def text_key(text: str) -> str:
    """Texts equal up to case and whitespace are the same text (copies across outlets)."""
    return " ".join(text.lower().split())


def _cell(value: object, where: str, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LabelledDataError(f"{where}: the {column} is empty or not a string")
    return value.strip()


def _given(values: list[object], where: str) -> list[str]:
    """Given negatives: an empty cell is no negative (rows may have fewer than others)."""
    found = []
    for value in values:
        if not isinstance(value, str):
            raise LabelledDataError(f"{where}: a negative is not a string")
        if value.strip():
            found.append(value.strip())
    return found


def _read_delimited(path: Path, form: PairFormat) -> Pairs:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        delimiter = _delimiter(path, handle.read(8192))
        handle.seek(0)
        if delimiter == "\t":
            rows = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE)
        else:
            rows = csv.reader(handle, delimiter=delimiter)
        header = next(_checked(rows, path), None)
        if header is None:
            raise LabelledDataError(f"{path}: empty file")
        lowered = [name.strip().lower() for name in header]
        wanted = [form.query_column, form.positive_column, *form.negative_columns]
        missing = [name for name in wanted if name.lower() not in lowered]
        if missing:
            raise LabelledDataError(
                f"{path}: no column named {', '.join(missing)} in header {header} "
                "(--query-column, --positive-column, --negative-column)"
            )
        at = [lowered.index(name.lower()) for name in wanted]
        pairs = Pairs([], [], [])
        for line, row in enumerate(_checked(rows, path), start=2):
            if not row:
                continue
            where = f"{path}:{line}"
            if len(row) <= max(at):
                raise LabelledDataError(f"{where}: expected {len(header)} columns, got {len(row)}")
            pairs.queries.append(_cell(row[at[0]], where, "query"))
            pairs.positives.append(_cell(row[at[1]], where, "positive"))
            pairs.negatives.append(_given([row[i] for i in at[2:]], where))
    return pairs


def _read_json_lines(path: Path, form: PairFormat) -> Pairs:
    pairs = Pairs([], [], [])
    with path.open(encoding="utf-8-sig") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{line}"
            try:
                row = json.loads(raw)
            except ValueError as error:
                raise LabelledDataError(f"{where}: not valid JSON: {error}") from error
            except RecursionError:
                raise LabelledDataError(f"{where}: JSON nested too deeply") from None
            if not isinstance(row, dict):
                raise LabelledDataError(f"{where}: not a JSON object")
            for key in (form.query_column, form.positive_column, *form.negative_columns):
                if key not in row:
                    raise LabelledDataError(f"{where}: no key named {key}")
            pairs.queries.append(_cell(row[form.query_column], where, "query"))
            pairs.positives.append(_cell(row[form.positive_column], where, "positive"))
            given: list[object] = []
            for key in form.negative_columns:  # a key may hold one negative or a list
                value = row[key]
                given.extend(value if isinstance(value, list) else [value])
            pairs.negatives.append(_given(given, where))
    return pairs


def read_pairs(path: Path, form: PairFormat) -> Pairs:
    """(query, positive[, negatives…]) rows from a CSV/TSV with a header row or JSON Lines."""
    if not path.is_file():
        raise LabelledDataError(f"{path}: no such file")
    try:
        if path.suffix.lower() in JSON_LINES_SUFFIXES:
            pairs = _read_json_lines(path, form)
        else:
            pairs = _read_delimited(path, form)
    except UnicodeDecodeError as error:
        raise LabelledDataError(f"{path}: not UTF-8 text ({error.reason})") from None
    if not pairs.queries:
        raise LabelledDataError(f"{path}: no pairs")
    return pairs


@dataclass(frozen=True)
class PreparedPairs:
    train: Pairs
    validation: Pairs
    dropped: int  # training pairs left out: their query or positive is a held-out one's


def prepare_pairs(
    data: Path, form: PairFormat, *, validation_share: float, seed: int, eval_data: Path | None
) -> PreparedPairs:
    """Every file read and checked, and the held-out part made, before any training.

    Without `eval_data`, a random share of the pairs is held out; training pairs whose query
    or positive text is that of a held-out pair are dropped, so that no held-out query is
    answered from memory (AG News repeats stories and headlines across outlets).
    """
    everything = read_pairs(data, form)
    if eval_data is not None:
        validation = read_pairs(eval_data, form)
        train, dropped = everything, 0
    else:
        rng = np.random.default_rng(seed)
        count = round(validation_share * len(everything))
        held = np.sort(rng.choice(len(everything), size=count, replace=False))
        validation = everything.subset(held)
        blocked = {text_key(t) for t in (*validation.queries, *validation.positives)}
        kept = [
            i
            for i in range(len(everything))
            if text_key(everything.queries[i]) not in blocked
            and text_key(everything.positives[i]) not in blocked
        ]
        train = everything.subset(kept)
        dropped = len(everything) - len(kept) - len(held)
    if len(validation) < MIN_HELD_OUT or len(train) < MIN_TRAINING:
        raise LabelledDataError(
            f"{data}: too few pairs to hold out a validation part ({len(train)} training, "
            f"{len(validation)} held out; at least {MIN_TRAINING} and {MIN_HELD_OUT} needed)"
        )
    return PreparedPairs(train, validation, dropped)
