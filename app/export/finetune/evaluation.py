"""`finetune`'s evaluation record: the exported model scored as served, and how it was
trained (what the manifest's `evaluation` and delta.json hold)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from app.config import available_cores
from app.engine.manifest import ModelManifest
from app.engine.passes.pipeline import open_pipeline
from app.export.evaluation import classification_scores
from app.export.finetune.base import ResolvedBase
from app.export.finetune.config import FinetuneConfig
from app.export.finetune.data import PreparedData
from app.export.finetune.training import TrainingRecord
from app.export.labelled_data import LabelledTexts
from app.export.messages import say


def score_model_directory(
    directory: Path, manifest: ModelManifest, precision: str, data: LabelledTexts
) -> dict[str, Any]:
    """Scores of a written model directory, through the engine's pipeline (as served)."""
    pipeline = open_pipeline(
        directory, manifest, precision, threads=available_cores(), device="cpu"
    )
    logits = pipeline.embed(data.texts, normalized=False)
    return classification_scores(data.labels, logits.argmax(axis=1), manifest.labels)


def evaluation_record(
    directory: Path,
    manifest: ModelManifest,
    prepared: PreparedData,
    config: FinetuneConfig,
    record: TrainingRecord,
    resolved: ResolvedBase,
    command: str,
    eval_data: Path | None,
) -> dict[str, Any]:
    validation = score_model_directory(directory, manifest, "fp32", prepared.validation)
    say(
        f"[eval] validation (served fp32 graph): accuracy {validation['accuracy']:.4f}, "
        f"macro-F1 {validation['macro_f1']:.4f}"
    )
    evaluation: dict[str, Any] = {
        "method": config.method,
        "base": resolved.source,
        "train_examples": len(prepared.train.texts),
        "validation_source": "--eval file"
        if eval_data
        else (f"stratified {config.validation:.0%} of the training file held out"),
        "validation": validation,
    }
    if "int8" in manifest.files:
        int8 = score_model_directory(directory, manifest, "int8", prepared.validation)
        evaluation["validation_int8_accuracy"] = int8["accuracy"]
    if prepared.test is not None:
        evaluation["test"] = score_model_directory(directory, manifest, "fp32", prepared.test)
        say(f"[eval] test: accuracy {evaluation['test']['accuracy']:.4f}")
    hyperparameters = {
        key: value
        for key, value in asdict(config).items()
        if key != "hidden" and (config.method == "lora" or not key.startswith("lora"))
    }
    hyperparameters["max_length"] = manifest.max_length
    evaluation |= {
        "training": {
            "steps": record.steps,
            "examples_seen": record.examples,
            "seconds": record.seconds,
            "best_step": record.best_step,
            "stopped_early": record.stopped_early,
            "loss_first_10_steps": record.mean_loss(first=True),
            "loss_last_10_steps": record.mean_loss(first=False),
            "history": record.history,
        },
        "hyperparameters": hyperparameters,
        "seed": config.seed,
        "command": command,
    }
    return evaluation
