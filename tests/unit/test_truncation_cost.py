"""Texts are cut before the tokenizer's own truncation, which costs the square of a
sentence pair's length: the cut keeps exactly what truncation of the whole text keeps."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer

from app.engine.models.tokenization import TextTokenizer
from tests.conftest import MODELS_DIR

TOKENIZER = MODELS_DIR / "minilm" / "tokenizer.json"
MAX_LENGTH = 256
# Words that tokenize in every way the cut must respect: several pieces, one [UNK] for
# a long word, punctuation split per mark, CJK split per character, combining accents,
# runs of spaces and newlines, and special tokens written in the text.
WORDS = [
    "the",
    "unbelievable",
    "a",
    "!!",
    "日本語",
    "テキスト",
    "café",
    "x" * 120,
    "  ",
    "\n",
    "don't",
    "[MASK]",
    "naïve",
    "12,345",
    "한국어",
    "e\u0301",
]


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    if not TOKENIZER.is_file():
        pytest.skip("models/minilm is not built")
    return TextTokenizer(TOKENIZER, MAX_LENGTH)


@pytest.fixture(scope="module")
def whole() -> Tokenizer:
    """The tokenizer truncating whole texts, as before."""
    reference = Tokenizer.from_file(str(TOKENIZER))
    reference.no_padding()
    reference.enable_truncation(MAX_LENGTH)
    return reference


def text(rng: random.Random, words: int) -> str:
    return "".join(rng.choice(WORDS) + rng.choice([" ", "", "  "]) for _ in range(words))


def test_a_cut_text_tokenizes_as_the_whole_text(tokenizer: TextTokenizer, whole: Tokenizer) -> None:
    rng = random.Random(0)
    for _ in range(120):
        item = text(rng, rng.choice([1, 100, 250, 260, 600, 3000]))
        (expected,) = whole.encode_batch([item])
        (encoded,) = tokenizer.encode([item])
        ((tokens, truncated),) = tokenizer.token_lists([item])
        assert encoded.ids.tolist() == expected.ids
        assert truncated is encoded.truncated is bool(expected.overflowing)
        assert [(t.start, t.stop) for t in tokens] == expected.offsets


def test_a_cut_pair_tokenizes_as_the_whole_pair(tokenizer: TextTokenizer, whole: Tokenizer) -> None:
    """Exactly, unless both texts are cut: then which keeps the odd token of the odd
    budget (256 - 3 special tokens) may differ, never more."""
    rng = random.Random(1)
    for _ in range(120):
        pair = (text(rng, rng.choice([1, 100, 260, 3000])), text(rng, rng.choice([1, 50, 1000])))
        (expected,) = whole.encode_batch([pair])
        (encoded,) = tokenizer.encode([pair])
        assert encoded.truncated is bool(expected.overflowing)
        assert encoded.tokens == len(expected.ids)
        second = encoded.type_ids.tolist().count(1)
        assert abs(second - expected.type_ids.count(1)) <= 1
        if second == expected.type_ids.count(1):
            assert encoded.ids.tolist() == expected.ids


@pytest.mark.parametrize("shape", ["a ", "!", "x", " "])
def test_what_the_tokenizer_sees_is_bounded_whatever_the_length(
    tokenizer: TextTokenizer, shape: str
) -> None:
    """Texts of 100,000 characters reach the tokenizer's truncation as a few thousand at
    most (or, with too few tokens to cut, whole: then there is nothing quadratic)."""
    long = (shape * 100_000)[:100_000]
    (cut_pair,) = tokenizer.cut([(long, long)])
    (cut_text,) = tokenizer.cut([long])
    for cut in (*cut_pair, cut_text):
        assert len(cut) <= 4 * MAX_LENGTH or len(tokenizer.encode([cut])[0].ids) < MAX_LENGTH
