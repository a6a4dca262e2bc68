"""The pipeline's steps: padding, pooling that ignores padding, normalization, and input order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.engine.models.tokenization import TextTokenizer, TokenizedText
from app.engine.passes.pipeline import Pipeline, normalize, pad_batch, pool

MINILM_TOKENIZER = Path(__file__).resolve().parents[2] / "models" / "minilm" / "tokenizer.json"


def item(*ids: int) -> TokenizedText:
    array = np.asarray(ids, dtype=np.int64)
    return TokenizedText(array, np.zeros_like(array), truncated=False)


def test_pad_batch_right_pads_to_the_longest_input() -> None:
    inputs = pad_batch([item(5, 6, 7), item(8)])
    np.testing.assert_array_equal(inputs["input_ids"], [[5, 6, 7], [8, 0, 0]])
    np.testing.assert_array_equal(inputs["attention_mask"], [[1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(inputs["token_type_ids"], np.zeros((2, 3)))


def test_mean_pooling_ignores_padding() -> None:
    hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(pool(hidden, mask, "mean"), [[2.0, 3.0]])


def test_cls_pooling_takes_the_first_token() -> None:
    hidden = np.arange(12, dtype=float).reshape(1, 3, 4)
    np.testing.assert_allclose(pool(hidden, np.ones((1, 3)), "cls"), [[0, 1, 2, 3]])


def test_normalize_scales_rows_and_keeps_zero_rows() -> None:
    out = normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


class CountingBackend:
    """Each token's state is (its id, 1): mean pooling gives (mean id, 1). Records passes."""

    name, device, packed = "fake", "cpu", False

    def __init__(self) -> None:
        self.passes: list[tuple[int, int]] = []  # (rows, tokens per row)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = inputs["input_ids"].astype(np.float32)
        self.passes.append(ids.shape)
        return {"last_hidden_state": np.stack([ids, np.ones_like(ids)], axis=-1)}


@pytest.fixture
def tokenizer() -> TextTokenizer:
    if not MINILM_TOKENIZER.is_file():
        pytest.fail("models/minilm is not built: run `make models`")
    return TextTokenizer(MINILM_TOKENIZER, 256)


def test_forward_runs_passes_of_at_most_rows_per_pass_in_order(tokenizer: TextTokenizer) -> None:
    backend = CountingBackend()
    pipeline = Pipeline(tokenizer, backend, "mean", rows_per_pass=2)
    items = [item(10, 20), item(30), item(1, 2, 3, 4), item(7), item(9, 9)]
    vectors = pipeline.forward(items)
    assert [rows for rows, _ in backend.passes] == [2, 2, 1]
    np.testing.assert_allclose([v[0] for v in vectors], [15, 30, 2.5, 7, 9])


def test_embed_sorts_by_length_but_answers_in_input_order(tokenizer: TextTokenizer) -> None:
    backend = CountingBackend()
    pipeline = Pipeline(tokenizer, backend, "mean", rows_per_pass=64)
    texts = ["a much longer text than the others, with many tokens in it", "hi", "a b c"]
    raw = pipeline.embed(texts, normalized=False)
    expected = [np.mean(tokenizer.encode([text])[0].ids) for text in texts]
    np.testing.assert_allclose(raw[:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(pipeline.embed(texts), axis=1), 1.0, rtol=1e-6)


def test_warm_up_is_not_observed(tokenizer: TextTokenizer) -> None:
    seen: list[tuple[int, int]] = []
    pipeline = Pipeline(tokenizer, CountingBackend(), "mean", 8, lambda n, t: seen.append((n, t)))
    pipeline.warm_up("warm")
    assert seen == []
    pipeline.forward([item(1, 2), item(3)])
    assert seen == [(2, 4)]
