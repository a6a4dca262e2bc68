"""Explanations: words and their sub-word tokens, perturbations, and attributions whose
answer is known by construction (a model that reads one word, one that needs two)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from app.engine.errors import InvalidInput, PayloadTooLarge
from app.engine.models import explain
from app.engine.models.explain import ExplainOptions, TokenizedText
from app.engine.models.tokenization import TextTokenizer
from tests.conftest import MODELS_DIR

TOKENIZER = MODELS_DIR / "minilm" / "tokenizer.json"


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    if not TOKENIZER.is_file():
        pytest.skip("models/minilm is not built: run `make models`")
    return TextTokenizer(TOKENIZER, 256)


def tokenized(tokenizer: TextTokenizer, text: str):  # type: ignore[no-untyped-def]
    tokens, truncated = tokenizer.tokens(text)
    ids = np.asarray([token.id for token in tokens], dtype=np.int64)
    return TokenizedText(ids, np.zeros_like(ids), truncated), tokens


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Don't stop — it's GREAT!!!", ["Don't", "stop", "—", "it's", "GREAT", "!!!"]),
        # Unspaced scripts: a word per character (ideographs, kana, Hangul syllables).
        ("naïve café, 東京 rocks", ["naïve", "café", ",", "東", "京", "rocks"]),
        ("这部电影很好看。", ["这", "部", "电", "影", "很", "好", "看", "。"]),
        ("映画はとても良かった", ["映", "画", "は", "と", "て", "も", "良", "か", "っ", "た"]),
        ("정말 좋았어", ["정", "말", "좋았어"]),  # 좋았어 is one [UNK]: one unit for the model
        ("  spaced\tout\n words ", ["spaced", "out", "words"]),
        ("unbelievably-good (really).", ["unbelievably", "-", "good", "(", "really", ")."]),
    ],
)
def test_words_are_readable_and_own_their_sub_word_tokens(
    tokenizer: TextTokenizer, text: str, words: list[str]
) -> None:
    _, tokens = tokenized(tokenizer, text)
    found = explain.words_of(text, tokens)
    assert [word.text for word in found] == words
    owned = sorted(p for word in found for p in word.tokens)
    content = [p for p, token in enumerate(tokens) if not token.special]
    assert owned == content  # every sub-word token belongs to exactly one word
    for word in found:
        assert text[word.start : word.stop] == word.text
        for position in word.tokens:
            token = tokens[position]
            assert word.start <= token.start < word.stop or token.start < word.stop <= token.stop


def test_words_past_truncation_are_left_out() -> None:
    if not TOKENIZER.is_file():
        pytest.skip("models/minilm is not built")
    short = TextTokenizer(TOKENIZER, 6)  # [CLS] + 4 tokens + [SEP]
    text = "one two three four five six seven"
    full, tokens = tokenized(short, text)
    assert full.truncated
    assert [word.text for word in explain.words_of(text, tokens)] == ["one", "two", "three", "four"]


def test_removing_words_removes_exactly_their_tokens(tokenizer: TextTokenizer) -> None:
    text = "the film was unbelievably boring"
    full, tokens = tokenized(tokenizer, text)
    words = explain.words_of(text, tokens)
    mask = np.array([[True, True, True, False, True]])
    (item,) = explain.perturbed(full, words, mask)
    expected = tokenizer.encode(["the film was boring"])[0]
    np.testing.assert_array_equal(item.ids, expected.ids)
    (nothing,) = explain.perturbed(full, words, np.zeros((1, 5), dtype=bool))
    assert nothing.tokens == 2  # [CLS] [SEP]


def reads(tokenizer: TextTokenizer, *needed: str):  # type: ignore[no-untyped-def]
    """A two-label model by construction: label 1 scores 1 when every word in `needed`
    is in the input (by token id), else 0; label 0 scores the opposite."""
    ids = [int(tokenizer.encode([word])[0].ids[1]) for word in needed]
    calls: list[int] = []

    async def scores(items: list[TokenizedText]) -> np.ndarray:
        calls.append(len(items))
        hit = np.array([float(all(i in item.ids for i in ids)) for item in items])
        return np.stack([1 - hit, hit], axis=1)

    return scores, calls


async def run(tokenizer: TextTokenizer, text: str, scores, **options):  # type: ignore[no-untyped-def]
    full, tokens = tokenized(tokenizer, text)
    return await explain.explain(
        full, tokens, text, ["negative", "positive"], scores, ExplainOptions(**options)
    )


async def test_occlusion_finds_the_one_word_the_model_reads(tokenizer: TextTokenizer) -> None:
    scores, _ = reads(tokenizer, "terrible")
    result = await run(tokenizer, "what a terrible , terrible film", scores, target="positive")
    assert result.target == "positive" and result.score == 1.0 and result.empty_score is None
    # Either "terrible" alone keeps the score: occlusion gives neither any credit.
    assert [w.score for w in result.words] == [0.0] * 6
    result = await run(tokenizer, "what a terrible film", scores)
    assert result.target == "positive"  # the top label by default
    assert [(w.text, w.score) for w in result.words] == [
        ("what", 0.0),
        ("a", 0.0),
        ("terrible", 1.0),
        ("film", 0.0),
    ]
    assert result.evaluations == 5


@pytest.mark.parametrize("samples", [64, 2048])  # sampled, and every subset
async def test_shap_gives_the_read_word_all_the_credit(
    tokenizer: TextTokenizer, samples: int
) -> None:
    scores, _ = reads(tokenizer, "awful")
    text = "honestly the plot was awful and the acting was flat too"
    result = await run(tokenizer, text, scores, method="shap", samples=samples)
    values = {w.text: w.score for w in result.words}
    assert values.pop("awful") == pytest.approx(1.0, abs=1e-9)
    assert max(map(abs, values.values())) < 1e-9
    assert result.empty_score == 0.0 and result.score == 1.0


async def test_shap_with_every_subset_is_exact_for_an_interaction(
    tokenizer: TextTokenizer,
) -> None:
    # Needs both words: their Shapley values are 1/2 each, exactly, others 0.
    scores, calls = reads(tokenizer, "not", "bad")
    result = await run(tokenizer, "this is not bad at all", scores, method="shap", samples=256)
    values = {w.text: w.score for w in result.words}
    assert values["not"] == pytest.approx(0.5) and values["bad"] == pytest.approx(0.5)
    assert sum(abs(values[w]) for w in ("this", "is", "at", "all")) < 1e-9
    # Every one of the 2^6 subsets once, the whole text included, in one request: the
    # batcher's admission prices the explanation whole before any pass.
    assert result.evaluations == 2**6 and calls == [2**6]


async def test_sampled_shap_sums_to_the_score_change_and_seeds_reproduce(
    tokenizer: TextTokenizer,
) -> None:
    text = " ".join(f"w{i}" for i in range(20)) + " not bad"
    scores, _ = reads(tokenizer, "not", "bad")
    first = await run(tokenizer, text, scores, method="shap", samples=128, seed=7)
    again = await run(tokenizer, text, scores, method="shap", samples=128, seed=7)
    other = await run(tokenizer, text, scores, method="shap", samples=128, seed=8)
    assert [w.score for w in first.words] == [w.score for w in again.words]
    assert [w.score for w in first.words] != [w.score for w in other.words]
    assert math.isclose(sum(w.score for w in first.words), first.score - first.empty_score)
    top = sorted(first.words, key=lambda w: -w.score)[:2]
    assert {w.text for w in top} == {"not", "bad"}
    assert first.samples == 128 and first.seed == 7


def test_kernel_weights_recover_shapley_values_of_any_game() -> None:
    rng = np.random.default_rng(0)
    players = 5
    worth = {s: rng.normal() for s in itertools.product([0, 1], repeat=players)}
    masks, weights = explain.coalitions(players, 10_000, rng)
    values = np.array([worth[tuple(int(v) for v in row)] for row in masks])
    empty, full = worth[(0,) * players], worth[(1,) * players]
    fitted = explain.kernel_shap(masks, weights, values, empty, full)
    for player in range(players):
        exact = 0.0
        for subset, value in worth.items():
            if subset[player]:
                continue
            size = sum(subset)
            joined = tuple(1 if i == player else v for i, v in enumerate(subset))
            share = math.factorial(size) * math.factorial(players - size - 1)
            exact += share / math.factorial(players) * (worth[joined] - value)
        assert fitted[player] == pytest.approx(exact, abs=1e-9)


async def test_limits_and_an_unknown_target(tokenizer: TextTokenizer) -> None:
    scores, _ = reads(tokenizer, "fine")
    with pytest.raises(PayloadTooLarge, match="ENCODER_MAX_EXPLAIN_WORDS"):
        await run(tokenizer, "one two three four", scores, max_words=3)
    with pytest.raises(InvalidInput, match="target 'neutral'"):
        await run(tokenizer, "fine", scores, target="neutral")
