"""The engine's side of TEI's routes: sentence pairs (tokenized with the pair template, or
refused), token ids decoded back to text, and per-token states (/embed_all) from the same
passes as pooled vectors, packed or padded."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.engine.errors import InvalidInput
from app.engine.manifest import ModelManifest
from app.engine.models.encoder import Encoder
from app.engine.models.tokenization import TextTokenizer, encodes_pairs
from app.engine.passes.pipeline import open_pipeline

MINILM = Path(__file__).resolve().parents[2] / "models" / "minilm"
TEXTS = ["The cat sits on the mat.", "Hi", "Quarterly revenue rose twelve percent this year."]

A = {"Sequence": {"id": "A", "type_id": 0}}
B = {"Sequence": {"id": "B", "type_id": 1}}
SEP = {"SpecialToken": {"id": "[SEP]", "type_id": 0}}


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    if not (MINILM / "tokenizer.json").is_file():
        pytest.skip("models/minilm is not built: run `make models`")
    return TextTokenizer(MINILM / "tokenizer.json", 256)


@pytest.mark.parametrize(
    ("processor", "pairs"),
    [
        ({"type": "TemplateProcessing", "single": [A], "pair": [A, SEP, B, SEP]}, True),
        ({"type": "TemplateProcessing", "single": [A], "pair": [A, B]}, False),  # back to back
        ({"type": "TemplateProcessing", "single": [A]}, False),
        ({"type": "BertProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101]}, True),
        ({"type": "RobertaProcessing"}, True),
        ({"type": "ByteLevel"}, False),
        (
            {
                "type": "Sequence",
                "processors": [{"type": "ByteLevel"}, {"type": "RobertaProcessing"}],
            },
            True,
        ),
        (None, False),
    ],
)
def test_pairs_need_a_separator_in_the_template(processor: Any, pairs: bool) -> None:
    assert encodes_pairs(processor) is pairs


def test_a_pair_is_laid_out_with_segment_ids(tokenizer: TextTokenizer) -> None:
    assert tokenizer.encodes_pairs
    pair, single = tokenizer.encode([("a cat", "a dog"), "a cat"])
    assert pair.ids.tolist() == [101, 1037, 4937, 102, 1037, 3899, 102]  # [CLS] a [SEP] b [SEP]
    assert pair.type_ids.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert single.ids.tolist() == [101, 1037, 4937, 102]


def test_a_tokenizer_without_a_pair_template_refuses_pairs(tmp_path: Path) -> None:
    if not (MINILM / "tokenizer.json").is_file():
        pytest.skip("models/minilm is not built: run `make models`")
    data = json.loads((MINILM / "tokenizer.json").read_text())
    data["post_processor"]["pair"] = [A, B]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    single_only = TextTokenizer(tmp_path / "tokenizer.json", 256)
    manifest = ModelManifest.read(MINILM)
    encoder = Encoder(manifest, single_only, batches=None, request_timeout_s=5)  # type: ignore[arg-type]

    async def tokenize(texts: list[Any]) -> Any:
        return await encoder.tokenize(texts, truncate=True)

    with pytest.raises(InvalidInput, match="cannot take sentence pairs"):
        asyncio.run(tokenize([("a", "b")]))
    assert len(asyncio.run(tokenize(["a"]))) == 1


def test_decode_reverses_encode(tokenizer: TextTokenizer) -> None:
    ids = [item.ids.tolist() for item in tokenizer.encode(TEXTS)]
    assert tokenizer.decode(ids, skip_special_tokens=True) == [text.lower() for text in TEXTS]
    assert tokenizer.decode(ids[1:2], skip_special_tokens=False) == ["[CLS] hi [SEP]"]
    with pytest.raises(InvalidInput, match=r"ids\[1\] holds token ids outside the vocabulary"):
        tokenizer.decode([[101], [30522]], skip_special_tokens=True)


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "padded"])
def test_token_vectors_are_the_states_forward_pools(pack: bool) -> None:
    if not (MINILM / "model.onnx").is_file():
        pytest.skip("models/minilm is not built: run `make models`")
    manifest = ModelManifest.read(MINILM)
    pipeline = open_pipeline(MINILM, manifest, "fp32", threads=1, pack=pack, rows_per_pass=2)
    assert pipeline.backend.packed is pack
    items = pipeline.tokenize(TEXTS)
    states = pipeline.token_vectors(items)
    # One padded pass of an unpacked session: what the exporter's parity check compares.
    reference = open_pipeline(MINILM, manifest, "fp32", threads=1).token_states(TEXTS)
    for got, expected, item in zip(states, reference, items, strict=True):
        assert got.dtype == np.float32 and got.shape == (item.tokens, 384)
        np.testing.assert_allclose(got, expected, atol=1e-4)
    pooled = np.stack([rows.mean(axis=0) for rows in states])
    np.testing.assert_allclose(pooled, np.stack(pipeline.forward(items)), atol=1e-5)
