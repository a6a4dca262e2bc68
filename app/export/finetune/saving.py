"""`finetune --method lora`: the adapter saved as a delta, checked against the trained model,
and its record (delta.json) completed once the exported model is scored."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.engine.contract import Pooling
from app.engine.manifest import ModelManifest
from app.export.delta import (
    DELTA_DIR,
    DELTA_FORMAT,
    MAX_REFERENCE_DIFF,
    REFERENCE_TEXTS,
    check_logits,
    merged_from_delta,
    reference_logits,
    write_record,
)
from app.export.finetune.base import ResolvedBase
from app.export.finetune.training import model_logits


@dataclass
class SavedDelta:
    record: dict[str, Any]  # delta.json, completed by `write_delta`
    merged: torch.nn.Module  # the base with the saved delta merged in: what is exported
    recorded: np.ndarray  # the merged model's logits on REFERENCE_TEXTS


def save_adapter(model: torch.nn.Module, target: Path, source: str) -> None:
    model.save_pretrained(target)  # type: ignore[operator]
    (target / "README.md").unlink(missing_ok=True)  # peft's empty model card
    for written in target.iterdir():
        written.chmod(0o644)  # safetensors writes 0600: the server may run as another user
    # peft records the base's absolute path (a virtualenv here); record the portable name.
    config_path = target / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = source
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")


def save_lora_delta(
    model: torch.nn.Module,
    tokenizer: Any,
    work: Path,
    resolved: ResolvedBase,
    labels: list[str],
    max_length: int,
    *,
    task: str = "classification",
    pooling: Pooling = "cls",
    trained: np.ndarray | None = None,
) -> SavedDelta:
    """The adapter written to `work`/DELTA_DIR and merged back into the base, as `rebuild`
    will do it; raises when the merged model's logits differ from the trained model's.
    `trained`: the trained model's outputs on REFERENCE_TEXTS when not a classifier's
    logits (an embedding model's vectors, pooled by `pooling`)."""
    delta_dir = work / DELTA_DIR
    save_adapter(model, delta_dir, resolved.source)
    delta: dict[str, Any] = {
        "format": DELTA_FORMAT,
        "base": resolved.source,
        "source": f"{resolved.source} + LoRA delta ({DELTA_DIR}/)",
        "labels": list(labels),
        "max_length": max_length,
    }
    if task != "classification":  # absent: a classifier, as every delta before --task
        delta |= {"task": task, "pooling": pooling}
    if trained is None:
        trained = model_logits(model, tokenizer, list(REFERENCE_TEXTS), max_length)
    merged = merged_from_delta(delta_dir, delta)
    tokenizer_file = resolved.directory / "tokenizer.json"
    recorded = reference_logits(merged, tokenizer_file, max_length, pooling)
    # The saved delta must reproduce the trained model: a module left out of the
    # adapter (an untrained head) shows here, not after shipping.
    check_logits(recorded, trained, MAX_REFERENCE_DIFF, "the saved delta")
    return SavedDelta(delta, merged, recorded)


def write_delta(
    saved: SavedDelta,
    work: Path,
    directory: Path,
    manifest: ModelManifest,
    evaluation: dict[str, Any],
) -> None:
    """delta.json completed (precisions, reference logits, evaluation) and the delta copied
    into the model `directory`."""
    saved.record |= {
        "precisions": sorted(p for p in ("fp32", "int8") if p in manifest.files),
        "reference_texts": list(REFERENCE_TEXTS),
        "reference_logits": np.asarray(saved.recorded).tolist(),
        "evaluation": evaluation,
    }
    write_record(work / DELTA_DIR, saved.record)
    shutil.copytree(work / DELTA_DIR, directory / DELTA_DIR)
