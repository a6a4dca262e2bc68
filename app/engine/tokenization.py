"""Fast (Rust) tokenization to model inputs, with the token counts the batcher budgets on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from tokenizers import Tokenizer

from app.engine.errors import InputTooLong, InvalidInput

# Above this many characters a request is tokenized in a worker thread, so one
# large request cannot stall the event loop for everyone else.
INLINE_TOKENIZE_CHARS = 4096

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TokenizedText:
    """One input as token ids, ready to be padded or packed into a batch."""

    ids: np.ndarray  # int64, shape (tokens,)
    type_ids: np.ndarray  # int64, shape (tokens,)
    truncated: bool  # the text had more tokens than the model's max length

    @property
    def tokens(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True, slots=True)
class Token:
    id: int
    text: str
    start: int
    stop: int
    special: bool


class TextTokenizer:
    """Tokenizes texts for one model, truncating to its max length."""

    def __init__(self, path: Path, max_length: int) -> None:
        self.max_length = max_length
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def from_ids(self, ids_lists: list[list[int]]) -> list[TokenizedText]:
        """Inputs given as token ids (as POST /tokenize returns them, special tokens included)."""
        vocab = self.vocab_size
        items = []
        for index, ids in enumerate(ids_lists):
            if not ids:
                raise InvalidInput(f"input {index} is an empty list of token ids")
            # The length first: a huge list is refused before any per-token work.
            if len(ids) > self.max_length:
                raise InputTooLong(
                    f"input {index} has {len(ids)} tokens; the max length is {self.max_length}"
                )
            # Checked in Python (at most max_length ids): an id past int64 must be a 422 too.
            if any(not 0 <= token < vocab for token in ids):
                raise InvalidInput(
                    f"input {index} has token ids outside the vocabulary (0-{vocab - 1})"
                )
            array = np.asarray(ids, dtype=np.int64)
            items.append(TokenizedText(array, np.zeros_like(array), truncated=False))
        return items

    def encode(self, texts: list[str]) -> list[TokenizedText]:
        encodings = self._tokenizer.encode_batch(texts)
        return [
            TokenizedText(
                ids=np.asarray(encoding.ids, dtype=np.int64),
                type_ids=np.asarray(encoding.type_ids, dtype=np.int64),
                # With truncation on, the tokens cut off land in `overflowing`.
                truncated=bool(encoding.overflowing),
            )
            for encoding in encodings
        ]

    def tokens(self, text: str) -> tuple[list[Token], bool]:
        """The tokens of one text with their character spans, and whether it was truncated."""
        return self.token_lists([text])[0]

    def token_lists(self, texts: list[str]) -> list[tuple[list[Token], bool]]:
        """`tokens` of each text, tokenized as one batch."""
        return [
            (
                [
                    Token(id=token_id, text=token, start=start, stop=stop, special=bool(special))
                    for token_id, token, (start, stop), special in zip(
                        encoding.ids,
                        encoding.tokens,
                        encoding.offsets,
                        encoding.special_tokens_mask,
                        strict=True,
                    )
                ],
                bool(encoding.overflowing),
            )
            for encoding in self._tokenizer.encode_batch(texts)
        ]


async def tokenize_without_stalling(
    texts: list[str], work: Callable[[list[str]], T], executor: Executor | None
) -> T:
    """`work(texts)`: inline when short (a thread hop costs more), else in `executor`."""
    if sum(map(len, texts)) > INLINE_TOKENIZE_CHARS:
        return await asyncio.get_running_loop().run_in_executor(executor, work, texts)
    return work(texts)
