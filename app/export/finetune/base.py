"""The model `finetune` starts from: the base resolved, and LoRA adapters put on it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from app.engine.manifest import MANIFEST_FILE, ModelManifest
from app.export.finetune.config import FinetuneConfig
from app.export.source import loading, read_sentence_transformer_config, resolve_source

# LoRA on every linear layer inside the encoder's blocks (BERT, RoBERTa, MiniLM: query, key,
# value, dense; DistilBERT: q_lin … lin2); the pooler and classifier are trained in full.
LORA_TARGETS = r".*\.layer\.\d+\..*\.(query|key|value|dense|q_lin|k_lin|v_lin|out_lin|lin1|lin2)"
LORA_FULLY_TRAINED = ["classifier", "pooler", "pre_classifier"]
# A layer-dropped student's kept layers read other inputs than they did in the teacher; their
# norms (768 numbers each) are retrained in full too, for `compress`.
LAYER_NORMS = ["LayerNorm", "sa_layer_norm", "output_layer_norm"]


@dataclass(frozen=True)
class ResolvedBase:
    source: str  # what delta.json records: the installed package or directory
    directory: Path  # the transformers model directory
    max_length: int


def resolve_base(base: str, models_dir: Path) -> ResolvedBase:
    """A repository model (its manifest's source and max length) or a source itself."""
    if (models_dir / base / MANIFEST_FILE).is_file():
        manifest = ModelManifest.read(models_dir / base)
        return ResolvedBase(manifest.source, resolve_source(manifest.source), manifest.max_length)
    directory = resolve_source(base)
    with loading(base):
        configured = read_sentence_transformer_config(directory).max_length
        if configured is None:
            config = json.loads((directory / "config.json").read_text())
            configured = min(512, int(config.get("max_position_embeddings", 512)))
        return ResolvedBase(base, directory, int(configured))


def lora_model(
    model: torch.nn.Module,
    config: FinetuneConfig,
    *,
    embedding: bool = False,
    train_norms: bool = False,
) -> torch.nn.Module:
    """LoRA adapters on `model`; `embedding`: an encoder without a head (its pooled states
    are the output), so no head is trained in full; `train_norms`: the layer norms too."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(
        task_type=TaskType.FEATURE_EXTRACTION if embedding else TaskType.SEQ_CLS,
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=LORA_TARGETS,
        modules_to_save=(
            ([] if embedding else LORA_FULLY_TRAINED) + (LAYER_NORMS if train_norms else [])
        )
        or None,
    )
    tuned: torch.nn.Module = get_peft_model(model, lora)
    return tuned
