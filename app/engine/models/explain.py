"""Explanations: how much each word of a text moved a model's score for one label.

Words are runs of word characters (apostrophes inside kept: "don't"), single characters
of scripts written without spaces (CJK ideographs, kana, Hangul), or runs of
punctuation, each mapped to the sub-word tokens whose character spans overlap it most; a
word with no token (cut off by truncation) is left out. A perturbed input is the text's
own token ids with some words' tokens removed (special tokens always kept), so no text is
tokenized twice and a word is exactly the tokens the model saw for it.

Two methods:
- `occlusion`: a word's score is the target score of the whole text minus that of the
  text without the word (one input per word);
- `shap`: Shapley values over words, estimated by Kernel SHAP (Lundberg & Lee, 2017): the
  target score of random word subsets, drawn by the Shapley kernel in complementary
  pairs, fitted by weighted least squares under the constraint that the values add up to
  score(text) - score(no words). With few words (2^words - 2 <= samples) every subset is
  scored and the values are exact. A `seed` makes the draw, and so the answer,
  reproducible.

Written here rather than with the `shap` package: its KernelExplainer calls a model
synchronously in one process, and it brings numba, pandas and scikit-learn into the
serving runtime. Here every perturbation goes through the model's batcher at low
priority (app/engine/batching/), all in one request, so an explanation shares passes
with nothing interactive, counts against the queue limits, is priced whole by the
batcher's admission (refused at once, 429, when it could not finish before its
deadline), and stops with its request (a client that hangs up, a deadline that passes).
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from app.engine.contract import ExplainOptions, Explanation, Token, WordScore
from app.engine.contract import ExplainMethod as Method
from app.engine.errors import InvalidInput, PayloadTooLarge
from app.engine.models.tokenization import TokenizedText

# Scripts written without spaces between words, whose every character is one unit (as
# BERT's tokenizer splits CJK ideographs, and as SHAP's and LIME's text maskers do): CJK
# ideographs (with their extensions and compatibility forms), kana (half-width too) and
# Hangul syllables. Unsplit, a sentence of them would be explained as one "word".
CJK = (
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
    "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f\uac00-\ud7af"
)
# A word: one CJK character, a run of other word characters (apostrophes inside kept:
# "don't"), or a run of punctuation.
WORD = re.compile(rf"[{CJK}]|[^\W{CJK}]+(?:['’][^\W{CJK}]+)*|[^\w\s]+")

# Every label's scores of each input (special tokens included), in order: (inputs, labels).
Scorer = Callable[[list[TokenizedText]], Awaitable[np.ndarray]]


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start: int  # character span in the text
    stop: int
    tokens: tuple[int, ...]  # positions of its sub-word tokens in the tokenized input


def words_of(text: str, tokens: list[Token]) -> list[Word]:
    """The text's words, each with the tokens that overlap it most; words without tokens
    (past truncation, or only characters the tokenizer drops) are left out."""
    spans = joined([(match.start(), match.end()) for match in WORD.finditer(text)], tokens)
    starts = [start for start, _ in spans]
    owned: list[list[int]] = [[] for _ in spans]
    for position, token in enumerate(tokens):
        if token.special or token.stop <= token.start:
            continue
        # The candidates: the word starting at or before the token, and those after it
        # that begin inside it; the one with the largest overlap owns the token.
        first = max(bisect.bisect_right(starts, token.start) - 1, 0)
        best, best_overlap = -1, 0
        for index in range(first, len(spans)):
            start, stop = spans[index]
            if start >= token.stop:
                break
            overlap = min(stop, token.stop) - max(start, token.start)
            if overlap > best_overlap:
                best, best_overlap = index, overlap
        if best >= 0:
            owned[best].append(position)
    return [
        Word(text[start:stop], start, stop, tuple(positions))
        for (start, stop), positions in zip(spans, owned, strict=True)
        if positions
    ]


def joined(spans: list[tuple[int, int]], tokens: list[Token]) -> list[tuple[int, int]]:
    """`spans` with the words that one token covers whole made one: the model cannot tell
    them apart (one [UNK] for a run of CJK characters its vocabulary lacks, say)."""
    starts = [start for start, _ in spans]
    stops = [stop for _, stop in spans]
    # joins[i]: word i and word i + 1 are one word.
    joins = [False] * len(spans)
    for token in tokens:
        if token.special or token.stop <= token.start:
            continue
        first = bisect.bisect_left(starts, token.start)
        last = bisect.bisect_right(stops, token.stop) - 1
        for index in range(first, last):
            joins[index] = True
    merged: list[tuple[int, int]] = []
    for index, (start, stop) in enumerate(spans):
        if index and joins[index - 1]:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged


def perturbed(full: TokenizedText, words: list[Word], masks: np.ndarray) -> list[TokenizedText]:
    """The input with, per row of `masks` (rows x words, True: kept), the tokens of the
    words not kept removed; special tokens and tokens of no word stay."""
    word_of = np.full(full.tokens, -1)
    for index, word in enumerate(words):
        word_of[list(word.tokens)] = index
    in_word = word_of >= 0
    items = []
    for mask in masks:
        keep = ~in_word | np.concatenate([mask, [True]])[word_of]
        items.append(TokenizedText(full.ids[keep], full.type_ids[keep], truncated=False))
    return items


def check_words(words: list[Word], options: ExplainOptions) -> None:
    if len(words) > options.max_words:
        raise PayloadTooLarge(
            f"the text has {len(words)} words; explanations are limited to "
            f"{options.max_words} (ENCODER_MAX_EXPLAIN_WORDS)"
        )


def target_index(labels: list[str], target: str | None, scores: np.ndarray) -> int:
    """The target label's index: the one named, or the top-scoring one."""
    if target is None:
        return int(np.argmax(scores))
    if target not in labels:
        shown = ", ".join(repr(label) for label in labels[:10])
        raise InvalidInput(f"target {target[:64]!r} is not a label of this model ({shown})")
    return labels.index(target)


def masks_of(words: list[Word], options: ExplainOptions) -> tuple[np.ndarray, np.ndarray]:
    """The rows to score besides the whole text (rows x words, True: kept), and shap's
    regression weights of its subsets: occlusion, each word left out (no weights); shap,
    no words, then the subsets."""
    if options.method == "occlusion":
        return ~np.eye(len(words), dtype=bool), np.ones(0)
    rng = np.random.default_rng(options.seed)
    masks, weights = coalitions(len(words), options.samples, rng)
    return np.concatenate([np.zeros((1, len(words)), dtype=bool), masks]), weights


async def evaluate(
    scores_of: Scorer, full: TokenizedText, words: list[Word], masks: np.ndarray
) -> tuple[np.ndarray, int, int]:
    """Every label's scores of the whole text (row 0) and of each row of `masks`, each
    distinct input run once, all in one request: the batcher's admission prices the
    explanation whole before any pass runs (429 at once when it could not finish before
    its deadline). Also the inputs and the tokens run."""
    if not words:
        return np.asarray(await scores_of([full]), dtype=np.float64), 1, full.tokens
    everything = np.concatenate([np.ones((1, len(words)), dtype=bool), masks])
    unique, inverse = np.unique(everything, axis=0, return_inverse=True)
    items = perturbed(full, words, unique)
    scores = np.asarray(await scores_of(items), dtype=np.float64)
    return scores[inverse.reshape(-1)], len(items), sum(item.tokens for item in items)


def kernel_weight(words: int, size: int) -> float:
    """The Shapley kernel: the weight of a subset of `size` of `words` words."""
    return (words - 1) / (math.comb(words, size) * size * (words - size))


def coalitions(words: int, samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Subsets (rows x words, True: kept; never none or all) and their regression weights:
    every subset with its kernel weight when they number at most `samples`, else
    `samples` drawn by the kernel in complementary pairs, equally weighted."""
    if words < 31 and 2**words - 2 <= samples:
        codes = np.arange(1, 2**words - 1)
        masks = (codes[:, None] >> np.arange(words)) & 1 == 1
        sizes = masks.sum(axis=1)
        weights = np.array([kernel_weight(words, int(size)) for size in sizes])
        return masks, weights
    sizes = np.arange(1, words)
    size_weights = (words - 1) / (sizes * (words - sizes))
    pairs = max(samples // 2, 1)
    drawn = rng.choice(sizes, size=pairs, p=size_weights / size_weights.sum())
    masks = np.zeros((pairs, words), dtype=bool)
    for row, size in enumerate(drawn):
        masks[row, rng.choice(words, size=int(size), replace=False)] = True
    masks = np.concatenate([masks, ~masks])  # the complement: same kernel weight
    return masks, np.ones(len(masks))


def kernel_shap(
    masks: np.ndarray, weights: np.ndarray, values: np.ndarray, empty: float, full: float
) -> np.ndarray:
    """Shapley values fitted to subset scores by weighted least squares, summing exactly
    to `full - empty` (the last word's value is eliminated by that constraint)."""
    z = masks.astype(np.float64)
    total = full - empty
    if z.shape[1] == 1:
        return np.array([total])
    design = z[:, :-1] - z[:, -1:]
    target = values - empty - z[:, -1] * total
    root = np.sqrt(weights)[:, None]
    head, *_ = np.linalg.lstsq(design * root, target * root[:, 0], rcond=None)
    return np.append(head, total - head.sum())


async def explain(
    full: TokenizedText,
    tokens: list[Token],
    text: str,
    labels: list[str],
    scores_of: Scorer,
    options: ExplainOptions,
) -> Explanation:
    """Explain the model's score of `labels[target]` for `text` (tokenized as `full`, its
    tokens with spans as `tokens`); `scores_of` gives every label's scores per input."""
    words = words_of(text, tokens)
    check_words(words, options)
    if options.target is not None:  # a label the model lacks: refused before any pass
        target_index(labels, options.target, np.zeros(len(labels)))
    masks, weights = masks_of(words, options)
    scores, runs, run_tokens = await evaluate(scores_of, full, words, masks)
    index = target_index(labels, options.target, scores[0])
    full_score = float(scores[0, index])
    targets = scores[1:, index]
    is_shap = options.method == "shap"
    empty: float | None = None
    if not words:
        values = np.zeros(0)
    elif not is_shap:  # occlusion: what the score lost without each word
        values = full_score - targets
    else:
        empty = float(targets[0])
        values = kernel_shap(masks[1:], weights, targets[1:], empty, full_score)
    return Explanation(
        method=options.method,
        target=labels[index],
        labels=list(labels),
        score=full_score,
        empty_score=empty,
        words=[
            WordScore(word.text, word.start, word.stop, float(value))
            for word, value in zip(words, values, strict=True)
        ],
        truncated=full.truncated,
        samples=options.samples if is_shap else None,
        seed=options.seed if is_shap else None,
        evaluations=runs,
        tokens=run_tokens,
    )
