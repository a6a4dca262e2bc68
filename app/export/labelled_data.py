"""Labelled training text: CSV/TSV/JSON Lines reading and a leak-free, stratified held-out split."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

import numpy as np

TEXT_COLUMNS = ("sentence", "content", "text")
LABEL_COLUMN = "label"
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")
# Sub-phrases are indexed only for texts up to this many words: a text of n words has
# n(n+1)/2 of them, and long documents are not phrase-tree data anyway.
MAX_PHRASE_WORDS = 64
PHRASE_SAMPLE = 256  # rows checked to decide whether the data lists sub-phrases
PHRASE_DATA_SHARE = 0.25
# Texts are cut to this many characters per token of the max length before they are
# tokenized: many times any tokenizer's average (an English word-piece is about 4), so the
# tokens kept are the same, and one huge text cannot cost gigabytes of tokens that
# truncation would drop anyway.
CHARS_PER_TOKEN = 50


class LabelledDataError(ValueError):
    """A labelled file that cannot be trained on; the message names the file (and line)."""


@dataclass(frozen=True)
class LabelledTexts:
    texts: list[str]
    labels: np.ndarray  # int64 label indices, in the order of the label names

    def clipped(self, max_length: int) -> LabelledTexts:
        """The texts cut to what `max_length` tokens can hold (see CHARS_PER_TOKEN)."""
        return LabelledTexts(clip_texts(self.texts, max_length), self.labels)


def clip_texts(texts: list[str], max_length: int) -> list[str]:
    limit = max_length * CHARS_PER_TOKEN
    return [text if len(text) <= limit else text[:limit] for text in texts]


def _delimiter(path: Path, sample: str) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    if path.suffix.lower() == ".csv":
        return ","
    try:
        return csv.Sniffer().sniff(sample, delimiters="\t,;").delimiter
    except csv.Error as error:
        raise LabelledDataError(
            f"{path}: cannot tell the delimiter (name it .tsv, .csv or .jsonl)"
        ) from error


def _column(header: list[str], candidates: tuple[str, ...], path: Path) -> int:
    lowered = [name.strip().lower() for name in header]
    for name in candidates:
        if name.lower() in lowered:
            return lowered.index(name.lower())
    raise LabelledDataError(f"{path}: no column named {' or '.join(candidates)} in header {header}")


def _label_index(value: object, names: list[str], where: str, first: int = 0) -> int:
    """A label name's position in `names`, or an index counted from `first`."""
    text = str(value).strip()
    if text in names:
        return names.index(text)
    if isinstance(value, bool) or not (isinstance(value, int) or text.isdigit()):
        index = -1
    else:
        index = int(text) - first
    if 0 <= index < len(names):
        return index
    raise LabelledDataError(
        f"{where}: label {text!r} is neither one of {names} nor an index "
        f"from {first} to {first + len(names) - 1}"
    )


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LabelledDataError(f"{where}: the text is empty or not a string")
    return value


def _read_delimited(path: Path, names: list[str], columns: _Columns) -> tuple[list[str], list[int]]:
    # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first column name.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        delimiter = _delimiter(path, handle.read(8192))
        handle.seek(0)
        # GLUE-style TSVs leave quotes unescaped inside the text; CSVs use standard quoting.
        if delimiter == "\t":
            rows = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE)
        else:
            rows = csv.reader(handle, delimiter=delimiter)
        header = next(_checked(rows, path), None)
        if header is None:
            raise LabelledDataError(f"{path}: empty file")
        if columns.text:
            text_at = [_column(header, (name,), path) for name in columns.text]
        else:
            text_at = [_column(header, TEXT_COLUMNS, path)]
        label_at = _column(header, (columns.label,), path)
        texts: list[str] = []
        indices: list[int] = []
        for line, row in enumerate(_checked(rows, path), start=2):
            if not row:
                continue
            if len(row) <= max(*text_at, label_at):
                raise LabelledDataError(
                    f"{path}:{line}: expected {len(header)} columns, got {len(row)}"
                )
            where = f"{path}:{line}"
            texts.append(_text(" ".join(row[at].strip() for at in text_at), where))
            indices.append(_label_index(row[label_at], names, where, columns.first_index))
    return texts, indices


def _checked(rows: Iterator[list[str]], path: Path) -> Iterator[list[str]]:
    """The csv reader's rows, its errors (a field over the csv module's limit, a quote
    left open) as `LabelledDataError` naming the line. The field limit stays: it bounds one row."""
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as error:
            line = getattr(rows, "line_num", 0)
            raise LabelledDataError(
                f"{path}:{line}: {error} (a text over {csv.field_size_limit()} characters, "
                "or a quote left open)"
            ) from None
        yield row


def _read_json_lines(
    path: Path, names: list[str], columns: _Columns
) -> tuple[list[str], list[int]]:
    texts: list[str] = []
    indices: list[int] = []
    with path.open(encoding="utf-8-sig") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{line}"
            try:
                row = json.loads(raw)
            except ValueError as error:
                raise LabelledDataError(f"{where}: not valid JSON: {error}") from error
            except RecursionError:  # arrays or objects nested thousands deep
                raise LabelledDataError(f"{where}: JSON nested too deeply") from None
            if not isinstance(row, dict):
                raise LabelledDataError(f"{where}: not a JSON object")
            keys = columns.text or [next((key for key in TEXT_COLUMNS if key in row), "text")]
            for key in [*keys, columns.label]:
                if key not in row:
                    raise LabelledDataError(f"{where}: no key named {key}")
            parts = [row[key] for key in keys]
            if not all(isinstance(part, str) for part in parts):
                raise LabelledDataError(f"{where}: the text is not a string")
            texts.append(_text(" ".join(part.strip() for part in parts), where))
            indices.append(_label_index(row[columns.label], names, where, columns.first_index))
    return texts, indices


@dataclass(frozen=True)
class _Columns:
    text: list[str]  # joined with a space; empty: the first of TEXT_COLUMNS present
    label: str
    first_index: int


def read_labelled(
    path: Path,
    label_names: list[str],
    *,
    text_columns: Sequence[str] = (),
    label_column: str = LABEL_COLUMN,
    first_index: int = 0,
) -> LabelledTexts:
    """Labelled texts from a CSV or TSV with a header row, or JSON Lines (one object a line).

    The text is `text_columns` joined by a space (AG News: title, description), else the
    first column named sentence, content or text. Labels are names from `label_names` or
    integer indices into it counted from `first_index`. Bad input raises
    `LabelledDataError` naming the file (and line).
    """
    if not path.is_file():
        raise LabelledDataError(f"{path}: no such file")
    columns = _Columns(list(text_columns), label_column, first_index)
    try:
        if path.suffix.lower() in JSON_LINES_SUFFIXES:
            texts, indices = _read_json_lines(path, label_names, columns)
        else:
            texts, indices = _read_delimited(path, label_names, columns)
    except UnicodeDecodeError as error:
        raise LabelledDataError(f"{path}: not UTF-8 text ({error.reason})") from None
    if not texts:
        raise LabelledDataError(f"{path}: no labelled rows")
    return LabelledTexts(texts, np.asarray(indices, dtype=np.int64))


def require_every_class(data: LabelledTexts, label_names: list[str], path: Path) -> None:
    """A label without a single example cannot be learnt (or was misspelt in --labels)."""
    counts = np.bincount(data.labels, minlength=len(label_names))
    missing = [name for name, count in zip(label_names, counts, strict=True) if count == 0]
    if missing:
        raise LabelledDataError(f"{path}: no examples of label {', '.join(map(repr, missing))}")


def _sub_phrases_among(key: str, keys: set[str]) -> set[str]:
    """The contiguous word sequences of `key` (itself included) that are rows of the data.

    Only those that are rows are kept: the index of phrases is a subset of the rows, so
    linear in the file, where every sub-phrase of every sentence would be cubic in its
    length (about 1 GB per MB of 64-word rows). One candidate exists at a time.
    """
    # `key` is whitespace-normalised: words are separated by exactly one space.
    words = key.split(" ")
    starts = list(accumulate((len(word) + 1 for word in words[:-1]), initial=0))
    ends = [start + len(word) for start, word in zip(starts, words, strict=True)]
    found: set[str] = set()
    for i, start in enumerate(starts):
        for end in ends[i:]:
            phrase = key[start:end]
            if phrase in keys:
                found.add(phrase)
    return found


def _word_count(key: str) -> int:
    return key.count(" ") + 1 if key else 0


def _lists_sub_phrases(keys: list[str], rng: np.random.Generator) -> bool:
    """Whether many rows reappear inside other rows, as in SST's phrase-tree data."""
    # Rows padded with spaces and split by newlines: a match is a whole-word span of a row.
    joined = "\n".join(f" {key} " for key in keys)
    sample = rng.choice(len(keys), size=min(PHRASE_SAMPLE, len(keys)), replace=False)
    inside = sum(joined.count(f" {keys[i]} ") > 1 for i in sample if keys[i])
    return inside >= PHRASE_DATA_SHARE * len(sample)


def _maximal_rows(lengths: list[int], keys: list[str], rows: set[str]) -> np.ndarray:
    """Rows that are no other row's sub-phrase (for SST: the full sentences)."""
    contained: set[str] = set()
    maximal: list[int] = []
    # Longest first: a row is maximal unless an already-kept longer row contains it (a row
    # inside a dropped row is inside the kept row that contains that one).
    for row in sorted(range(len(keys)), key=lambda i: -lengths[i]):
        if keys[row] in contained:
            continue
        maximal.append(row)
        if lengths[row] <= MAX_PHRASE_WORDS:
            contained |= _sub_phrases_among(keys[row], rows)
    return np.asarray(sorted(maximal), dtype=np.int64)


def _stratified_sample(
    rows: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    chosen: list[np.ndarray] = []
    for label in np.unique(labels[rows]):
        members = rows[labels[rows] == label]
        count = min(max(1, round(fraction * len(members))), len(members) - 1)
        chosen.append(rng.choice(members, size=max(count, 0), replace=False))
    return np.sort(np.concatenate(chosen))


def held_out_split(
    texts: list[str], labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): a stratified sample held out, with no leak into training.

    Data sets such as SST-2 list every sub-phrase of each sentence as its own row: a random
    split would score the head on phrases it was trained on (measured: 0.93 "held-out" for a
    head at 0.79 on dev). Such data holds out whole sentences and drops their sub-phrases
    from training; other data drops training rows identical to a held-out row.
    Memory is linear in the file: the phrase index holds rows only (`_sub_phrases_among`).
    """
    keys = [" ".join(text.split()) for text in texts]
    lengths = [_word_count(key) for key in keys]
    rows = set(keys)
    rng = np.random.default_rng(seed)
    phrase_data = _lists_sub_phrases(keys, rng)
    candidates = _maximal_rows(lengths, keys, rows) if phrase_data else np.arange(len(texts))
    held = _stratified_sample(candidates, labels, fraction, rng)
    blocked: set[str] = set()
    for row in held:
        if phrase_data and lengths[row] <= MAX_PHRASE_WORDS:
            blocked |= _sub_phrases_among(keys[row], rows)
        blocked.add(keys[row])
    train = np.asarray([i for i, key in enumerate(keys) if key not in blocked], dtype=np.int64)
    return train, held
