"""Truncation from the left keeps the end of a text, exactly as the tokenizer's own left
truncation of the whole text would, also through the cut that bounds long texts' cost; and
export records a model's prompts from config_sentence_transformers.json."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from app.engine.models.tokenization import TextTokenizer
from app.export.source import read_prompts, read_sentence_transformer_config

TOKENIZER = Path(__file__).resolve().parents[2] / "models" / "minilm" / "tokenizer.json"
WORDS = ["alpha", "unbelievable", "tokenization", "x", "!", ",", "naïve", "日本", "end."]


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    if not TOKENIZER.is_file():
        pytest.fail("models/minilm is not built: run `make models`")
    return TextTokenizer(TOKENIZER, 16)  # a short max length: most texts go through the cut


def test_left_truncation_keeps_the_last_tokens(tokenizer: TextTokenizer) -> None:
    text = " ".join(f"w{i}" for i in range(60)) + " the very end"
    (left,) = tokenizer.encode([text], "left")
    (right,) = tokenizer.encode([text])
    assert left.truncated and right.truncated
    (kept_left,) = tokenizer.decode([left.ids.tolist()], skip_special_tokens=True)
    (kept_right,) = tokenizer.decode([right.ids.tolist()], skip_special_tokens=True)
    assert kept_left.endswith("w58 w59 the very end") and "w0" not in kept_left
    assert kept_right.startswith("w0 w1") and "end" not in kept_right
    assert left.ids[0] == right.ids[0] == 101 and left.ids[-1] == 102  # [CLS] ... [SEP]


@pytest.mark.parametrize("direction", ["left", "right"])
def test_the_cut_changes_nothing_the_tokenizer_would_keep(
    tokenizer: TextTokenizer, direction: str
) -> None:
    whole = tokenizer._left if direction == "left" else tokenizer._tokenizer
    draw = random.Random(7)
    for _ in range(150):
        text = " ".join(draw.choice(WORDS) for _ in range(draw.randint(3, 600)))
        (item,) = tokenizer.encode([text], direction)  # type: ignore[arg-type]
        expected = whole.encode(text)
        assert item.ids.tolist() == expected.ids, text[:80]
        assert item.truncated == bool(expected.overflowing)


def test_export_reads_the_prompts_of_config_sentence_transformers(tmp_path: Path) -> None:
    assert read_prompts(tmp_path) == {}  # no file: no prompts
    config = {"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": None}
    (tmp_path / "config_sentence_transformers.json").write_text(json.dumps(config))
    assert read_sentence_transformer_config(tmp_path).prompts == config["prompts"]
    (tmp_path / "config_sentence_transformers.json").write_text('{"prompts": ["query: "]}')
    with pytest.raises(ValueError, match="prompts must be an object"):
        read_prompts(tmp_path)
