"""Packed batches: short inputs laid end to end in rows, so little of a pass is padding.

Used where the backend's graph takes packed rows (app/backends/packing.py). A token
attends only to its own input's tokens and each input's positions restart at 0, so
every input gets the vector it would get alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.backends.packing import POSITION_IDS, SEGMENT_MASK
from app.engine.manifest import Pooling
from app.engine.models.tokenization import TokenizedText

# Tokens a row holds; a longer input gets a row of its own. Attention's cost per token
# grows with the row's length, so rows stay short: on 2 cores, queues of 16–32 texts of
# 8–40 words ran 25–35 % faster packed in rows of 64 (or 96) than as padded passes of 8,
# and rows of 256 gave most of that back.
ROW_TOKENS = 64


@dataclass(frozen=True, slots=True)
class Span:
    """Where one input lies in a packed pass."""

    row: int
    start: int
    tokens: int


def pack_rows(lengths: list[int], row_tokens: int = ROW_TOKENS) -> list[list[int]]:
    """Input indices grouped into rows, the rows of the longest inputs first.

    First-fit decreasing: longest inputs first, each into the first row with room. A row
    holds `row_tokens`; a longer input gets a row of its own, so it widens no other.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        length = lengths[index]
        row = next((r for r, free in enumerate(room) if free >= length), len(rows))
        if row == len(rows):
            rows.append([])
            room.append(max(row_tokens, length))
        rows[row].append(index)
        room[row] -= length
    return rows


def packed_passes(
    lengths: list[int], rows_per_pass: int, row_tokens: int = ROW_TOKENS
) -> list[list[list[int]]]:
    """Rows of input indices (`pack_rows`), grouped into forward passes.

    A pass is as wide as its widest row, so rows widened by a long input run in passes
    of their own. Each kind is shared evenly between the fewest passes of at most
    `rows_per_pass` rows: 10 rows run as 5 + 5, not 8 + 2.
    """
    rows = pack_rows(lengths, row_tokens)
    wide = sum(1 for row in rows if lengths[row[0]] > row_tokens)  # they come first
    passes = []
    for group in (rows[:wide], rows[wide:]):
        if group:
            count = -(-len(group) // rows_per_pass)
            size = -(-len(group) // count)
            passes += [group[start : start + size] for start in range(0, len(group), size)]
    return passes


def packed_inputs(
    items: Sequence[TokenizedText], rows: list[list[int]]
) -> tuple[dict[str, np.ndarray], list[Span]]:
    """The graph inputs for `rows` of `items`, and where each of those items lies.

    Spans come in the order the rows list the items.
    """
    width = max(sum(items[index].tokens for index in row) for row in rows)
    input_ids = np.zeros((len(rows), width), dtype=np.int64)
    token_type_ids = np.zeros_like(input_ids)
    attention_mask = np.zeros_like(input_ids)
    position_ids = np.zeros((len(rows), width), dtype=np.int32)
    segment_mask = np.zeros((len(rows), width, width), dtype=np.int32)
    spans = []
    for row, indices in enumerate(rows):
        start = 0
        for index in indices:
            item = items[index]
            stop = start + item.tokens
            input_ids[row, start:stop] = item.ids
            token_type_ids[row, start:stop] = item.type_ids
            attention_mask[row, start:stop] = 1
            position_ids[row, start:stop] = np.arange(item.tokens)
            segment_mask[row, start:stop, start:stop] = 1
            spans.append(Span(row, start, item.tokens))
            start = stop
    inputs: dict[str, np.ndarray] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        POSITION_IDS: position_ids,
        SEGMENT_MASK: segment_mask,
    }
    return inputs, spans


def pool_spans(hidden: np.ndarray, spans: list[Span], mode: Pooling) -> np.ndarray:
    """(rows, tokens, hidden) states -> one vector per span, in the spans' order."""
    if mode == "cls":
        return np.stack([hidden[span.row, span.start] for span in spans])
    return np.stack(
        [hidden[span.row, span.start : span.start + span.tokens].mean(axis=0) for span in spans]
    )
