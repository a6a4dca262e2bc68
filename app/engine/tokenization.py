"""Fast (Rust) tokenization to model inputs, with the token counts the batcher budgets on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from app.engine.errors import InputTooLong, InvalidInput


@dataclass(frozen=True, slots=True)
class TokenizedText:
    """One input as token ids, ready to be padded into a batch."""

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
            if any(not 0 <= token < vocab for token in ids):
                raise InvalidInput(
                    f"input {index} has token ids outside the vocabulary (0-{vocab - 1})"
                )
            if len(ids) > self.max_length:
                raise InputTooLong(
                    f"input {index} has {len(ids)} tokens; the max length is {self.max_length}"
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
        encoding = self._tokenizer.encode(text)
        tokens = [
            Token(id=token_id, text=token, start=start, stop=stop, special=bool(special))
            for token_id, token, (start, stop), special in zip(
                encoding.ids,
                encoding.tokens,
                encoding.offsets,
                encoding.special_tokens_mask,
                strict=True,
            )
        ]
        return tokens, bool(encoding.overflowing)


def pad_batch(items: list[TokenizedText]) -> dict[str, np.ndarray]:
    """Right-pad a batch to its longest input: the three standard encoder inputs."""
    longest = max(item.tokens for item in items)
    input_ids = np.zeros((len(items), longest), dtype=np.int64)
    token_type_ids = np.zeros_like(input_ids)
    attention_mask = np.zeros_like(input_ids)
    for row, item in enumerate(items):
        n = item.tokens
        input_ids[row, :n] = item.ids
        token_type_ids[row, :n] = item.type_ids
        attention_mask[row, :n] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
    }
