"""Fast (Rust) tokenization to model inputs, with the token counts the batcher budgets on."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import numpy as np
from tokenizers import Encoding, Tokenizer

from app.engine.contract import TextInput, Token, TruncationDirection
from app.engine.errors import InputTooLong, InvalidInput, ModelLoadError
from app.engine.manifest import ModelManifest

# Above this many characters a request is tokenized in a worker thread, so one
# large request cannot stall the event loop for everyone else.
INLINE_TOKENIZE_CHARS = 4096
# The same bound for decoding, in token ids (an English word-piece is about 4 characters).
INLINE_DECODE_IDS = INLINE_TOKENIZE_CHARS // 4
# A first guess at how many characters hold one token: a text is first measured on its
# first (max_length + 1) * this many characters, then on twice as many, and so on.
CHARS_PER_TOKEN_GUESS = 8
# What a model directory missing a file should do.
REBUILD = "run `make models` (or `encoder-serve export`) to build it"

T = TypeVar("T")

# Post-processors that lay out a pair with the model's special tokens and segment ids.
PAIR_PROCESSORS = {"BertProcessing", "RobertaProcessing"}
Item = TypeVar("Item", bound=TextInput)


@dataclass(frozen=True, slots=True)
class TokenizedText:
    """One input as token ids, ready to be padded or packed into a batch."""

    ids: np.ndarray  # int64, shape (tokens,)
    type_ids: np.ndarray  # int64, shape (tokens,)
    truncated: bool  # the text had more tokens than the model's max length

    @property
    def tokens(self) -> int:
        return int(self.ids.shape[0])


class TextTokenizer:
    """Tokenizes texts for one model, truncating to its max length."""

    def __init__(self, path: Path, max_length: int) -> None:
        self.max_length = max_length
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)
        self._path = path
        # The same tokenizer without truncation or special tokens, to find where to cut.
        self._measure = Tokenizer.from_file(str(path))
        self._measure.no_padding()
        self._measure.no_truncation()
        self.encodes_pairs = encodes_pairs(json.loads(path.read_text()).get("post_processor"))
        # Rerank pairs: the query is laid out whole and the document's end is cut, where
        # the pair truncation above (longest first) would shorten the query too.
        self._documents_cut = Tokenizer.from_file(str(path))
        self._documents_cut.no_padding()
        self._documents_cut.enable_truncation(max_length, strategy="only_second")

    @functools.cached_property
    def _left(self) -> Tokenizer:
        """The tokenizer truncating from the left (TEI's `truncation_direction: "Left"`),
        which keeps the end of a text: another instance, since truncation is a tokenizer's
        state and threads share them; built on first use, as it costs memory (6.6 MiB for
        minilm's) that most deployments never need."""
        left = Tokenizer.from_file(str(self._path))
        left.no_padding()
        left.enable_truncation(self.max_length, direction="left")
        return left

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

    def decode(self, ids_lists: list[list[int]], *, skip_special_tokens: bool) -> list[str]:
        """Texts of token ids (TEI's /decode); InvalidInput for an id outside the vocabulary."""
        vocab = self.vocab_size
        for index, ids in enumerate(ids_lists):
            # min and max run in C: no Python work per id.
            if ids and (min(ids) < 0 or max(ids) >= vocab):
                raise InvalidInput(
                    f"ids[{index}] holds token ids outside the vocabulary (0-{vocab - 1})"
                )
        return list(
            self._tokenizer.decode_batch(ids_lists, skip_special_tokens=skip_special_tokens)
        )

    def encode(
        self, texts: Sequence[TextInput], direction: TruncationDirection = "right"
    ) -> list[TokenizedText]:
        """Texts, or sentence pairs (the second text's tokens get segment id 1), truncated
        at `direction`'s end."""
        tokenizer = self._left if direction == "left" else self._tokenizer
        encodings = tokenizer.encode_batch(self.cut(texts, direction))
        return [
            TokenizedText(
                ids=np.asarray(encoding.ids, dtype=np.int64),
                type_ids=np.asarray(encoding.type_ids, dtype=np.int64),
                # With truncation on, the tokens cut off land in `overflowing`.
                truncated=bool(encoding.overflowing),
            )
            for encoding in encodings
        ]

    def encode_query_pairs(self, query: str, documents: Sequence[str]) -> list[TokenizedText]:
        """(query, document) pairs for a cross-encoder: the query is tokenized once, each
        document cut at its end so that the pair fits the max length (`truncated` says
        so). A query leaving no room for a document token is InputTooLong."""
        (query_text,) = self.cut([query])
        encoded_query = self._measure.encode(query_text, add_special_tokens=False)
        room = self.max_length - self._documents_cut.num_special_tokens_to_add(True)
        if len(encoded_query) >= room:
            raise InputTooLong(
                f"the query has {len(encoded_query)} tokens; with a document it must fit the "
                f"model's max length of {self.max_length} tokens (shorten the query)"
            )
        encoded = self._measure.encode_batch(self.cut(documents), add_special_tokens=False)
        pairs = [self._documents_cut.post_process(encoded_query, doc) for doc in encoded]
        return [
            TokenizedText(
                ids=np.asarray(pair.ids, dtype=np.int64),
                type_ids=np.asarray(pair.type_ids, dtype=np.int64),
                truncated=bool(pair.overflowing),
            )
            for pair in pairs
        ]

    def tokens(self, text: str) -> tuple[list[Token], bool]:
        """The tokens of one text with their character spans, and whether it was truncated."""
        return self.token_lists([text])[0]

    def token_lists(
        self, texts: list[str], add_special_tokens: bool = True
    ) -> list[tuple[list[Token], bool]]:
        """`tokens` of each text, tokenized as one batch (without the special tokens when
        not `add_special_tokens`: TEI's /tokenize field)."""
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
            for encoding in self._tokenizer.encode_batch(
                self.cut(texts), add_special_tokens=add_special_tokens
            )
        ]

    def cut(self, texts: Sequence[Item], direction: TruncationDirection = "right") -> list[Item]:
        """The texts (each text of a pair on its own) cut where truncation cannot reach:
        their end, or with `direction` "left" their start.

        The tokenizer's own truncation tokenizes a text whole first, and for a sentence
        pair builds every combination of the two texts' overflowing windows: time and
        memory grow with the square of the pair's length (two 20,000-character texts cost
        200 MB, two of 100,000 several GB). A text cut two words past its first
        max_length + 1 tokens is tokenized and truncated exactly as the whole text (its
        kept tokens, their spans — from the left, counted from the cut —, `truncated`), so
        each text costs at most about that.
        One difference: when both texts of a pair are cut, which of them keeps the odd
        token of an odd budget follows the cut lengths, not the whole texts' lengths.
        """
        short = (self.max_length + 1) * CHARS_PER_TOKEN_GUESS
        if all(isinstance(item, str) and len(item) <= short for item in texts):
            return list(texts)  # the common case: nothing to cut, no per-text work
        sides = [text for item in texts for text in ((item,) if isinstance(item, str) else item)]
        cut = iter(self._cut_texts(sides, left=direction == "left"))
        return [
            cast(Item, next(cut) if isinstance(item, str) else (next(cut), next(cut)))
            for item in texts
        ]

    def _cut_texts(self, texts: list[str], *, left: bool) -> list[str]:
        """`cut` for single texts: each text longer than the first prefix measured on a
        prefix (a suffix, `left`) that doubles until it holds the cut point (or is the whole
        text), so a text costs at most about twice tokenizing the part kept, or the whole
        text when it has too few tokens."""
        needed = self.max_length + 1
        result = list(texts)
        size = needed * CHARS_PER_TOKEN_GUESS
        # A text within the first prefix is tokenized whole, as before: at most `size`
        # tokens, whose truncation stays cheap. Most texts are such: no second pass.
        pending = [index for index, text in enumerate(texts) if len(text) > size]
        while pending:
            parts = [texts[index][-size:] if left else texts[index][:size] for index in pending]
            measured = self._measure.encode_batch(parts, add_special_tokens=False)
            waiting = []
            for index, part, encoding in zip(pending, parts, measured, strict=True):
                text = texts[index]
                if left:
                    start = _cut_point_left(encoding, needed)
                    if start is not None:
                        result[index] = text[len(text) - len(part) + start :]
                else:
                    start = _cut_point(encoding, needed)
                    if start is not None:
                        result[index] = text[:start]
                if start is None and len(part) < len(text):
                    waiting.append(index)
            pending, size = waiting, size * 2
        return result


def _cut_point(encoding: Encoding, needed: int) -> int | None:
    """Where to cut the text of `encoding` (tokenized without special tokens) so that it
    keeps its first `needed` tokens exactly: the start of the second word after the one
    holding the last of them (the word right after may tokenize differently at the end of
    a text, or at the end of a prefix). None when the encoding holds no such point."""
    if len(encoding) < needed:
        return None
    word = encoding.token_to_word(needed - 1)
    if word is None:  # a token of no word: no safe cut point
        return None
    span = encoding.word_to_chars(word + 2)
    return None if span is None else int(span[0])


def _cut_point_left(encoding: Encoding, needed: int) -> int | None:
    """`_cut_point` from the other end: where a text must start so that it keeps the last
    `needed` tokens of the suffix `encoding` measured, exactly. The start of the second
    word before the one holding the first of them (the word right before may tokenize
    differently at the start of a text, as byte-level BPE does without its space); never
    the suffix's first word, which the suffix may have cut in the middle. None when the
    encoding holds no such point."""
    if len(encoding) < needed:
        return None
    word = encoding.token_to_word(len(encoding) - needed)
    if word is None or word < 3:  # a token of no word, or too close to the suffix's start
        return None
    span = encoding.word_to_chars(word - 2)
    return None if span is None else int(span[0])


def encodes_pairs(post_processor: object) -> bool:
    """Whether a tokenizer.json post-processor lays out sentence pairs with a separator
    between them (`[CLS] a [SEP] b [SEP]`). Without one (no post-processor, or a template
    whose pair part is tokenizers' default `$A $B`) the two texts would run together."""
    if not isinstance(post_processor, dict):
        return False
    kind = post_processor.get("type")
    if kind == "Sequence":
        return any(encodes_pairs(step) for step in post_processor.get("processors", []))
    if kind == "TemplateProcessing":
        pieces = post_processor.get("pair") or []
        order = [
            "special" if "SpecialToken" in piece else piece.get("Sequence", {}).get("id")
            for piece in pieces
            if isinstance(piece, dict)
        ]
        if "A" not in order or "B" not in order:
            return False
        return "special" in order[order.index("A") + 1 : order.index("B")]
    return kind in PAIR_PROCESSORS


def characters(texts: Sequence[TextInput]) -> int:
    return sum(
        len(text) if isinstance(text, str) else len(text[0]) + len(text[1]) for text in texts
    )


async def tokenize_without_stalling(
    texts: list[Item], work: Callable[[list[Item]], T], executor: Executor | None
) -> T:
    """`work(texts)`: inline when short (a thread hop costs more), else in `executor`."""
    if characters(texts) > INLINE_TOKENIZE_CHARS:
        return await asyncio.get_running_loop().run_in_executor(executor, work, texts)
    return work(texts)


def open_tokenizer(directory: Path, manifest: ModelManifest, max_length: int) -> TextTokenizer:
    path = directory / manifest.tokenizer
    if not path.is_file():
        raise ModelLoadError(f"model '{manifest.name}': {path} is missing; {REBUILD}")
    try:
        return TextTokenizer(path, max_length)
    except Exception as error:
        raise ModelLoadError(f"model '{manifest.name}': bad tokenizer {path}: {error}") from error
