"""The teacher: a served model directory, its outputs computed once with its own fp32 graph
(as served), and the student's starting point: the teacher's own weights, some layers dropped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

from app.config import available_cores
from app.engine.manifest import MANIFEST_FILE, ModelManifest
from app.engine.passes.pipeline import open_pipeline
from app.export.delta import DELTA_DIR, merged_from_delta, read_record
from app.export.layers import StudentShape, parse_keep_layers, strongest_neurons
from app.export.source import loading

TASKS = ("classification", "embedding")


@dataclass(frozen=True)
class Teacher:
    name: str
    directory: Path
    manifest: ModelManifest

    @property
    def delta(self) -> Path | None:
        """The teacher's committed delta, when it is shipped as one (a tuned classifier)."""
        delta = self.directory / DELTA_DIR
        return delta if self.manifest.task == "classification" and delta.is_dir() else None

    @property
    def torch_directory(self) -> Path:
        return self.directory / self.manifest.files["torch"]


def resolve_teacher(spec: str, models_dir: Path) -> Teacher:
    """`--from`: a model directory (`models/sentiment`) or a model name of `models_dir`."""
    path = Path(spec)
    directory = path if (path / MANIFEST_FILE).is_file() else models_dir / spec
    if not (directory / MANIFEST_FILE).is_file():
        raise ValueError(
            f"--from {spec}: neither a model directory nor a model of {models_dir} "
            f"(no {MANIFEST_FILE})"
        )
    manifest = ModelManifest.read(directory)
    if manifest.task not in TASKS:
        raise ValueError(
            f"--from {spec}: a {manifest.task} model; compress takes {' or '.join(TASKS)}"
        )
    if manifest.head:
        raise ValueError(
            f"--from {spec}: a head model on {manifest.base}'s embeddings has no encoder of its "
            f"own; compress {manifest.base} instead"
        )
    if manifest.task == "classification" and manifest.problem_type not in (
        None,
        "single_label_classification",
    ):
        raise ValueError(f"--from {spec}: {manifest.problem_type} classifiers are not supported")
    torch_dir = manifest.files.get("torch")
    if not torch_dir or not (directory / torch_dir).is_dir():
        raise ValueError(
            f"--from {spec}: no PyTorch weights (files.torch) to start the student from; "
            "rebuild or re-export the teacher"
        )
    return Teacher(directory.resolve().name, directory, manifest)


def teacher_outputs(teacher: Teacher, texts: list[str]) -> np.ndarray:
    """The teacher's logits (classifier) or unnormalized pooled vectors (embedding model),
    from its fp32 graph through the engine's pipeline: once, before training."""
    pipeline = open_pipeline(
        teacher.directory, teacher.manifest, "fp32", threads=available_cores(), device="cpu"
    )
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.asarray(pipeline.embed(texts, normalized=False), dtype=np.float32)


def student_start(
    teacher: Teacher, keep_layers: str | None, intermediate_size: int | None
) -> tuple[torch.nn.Module, StudentShape]:
    """The teacher's model with only the layers kept and, with `intermediate_size`, each
    kept block's strongest feed-forward neurons: every kept weight exactly the teacher's. A
    delta-shipped teacher is rebuilt from its delta, as `rebuild` will do it."""
    keep = parse_keep_layers(keep_layers, teacher.manifest.num_layers)
    model: torch.nn.Module
    with loading(str(teacher.directory)):
        if teacher.delta is not None:
            model = merged_from_delta(teacher.delta, read_record(teacher.delta))
        elif teacher.manifest.task == "classification":
            model = AutoModelForSequenceClassification.from_pretrained(teacher.torch_directory)
        else:
            model = AutoModel.from_pretrained(teacher.torch_directory)
    for parameter in model.parameters():  # a merged peft model comes back frozen
        parameter.requires_grad_(True)
    neurons = None
    if intermediate_size is not None:
        strongest = strongest_neurons(model, intermediate_size)
        neurons = [strongest[index] for index in keep]
    shape = StudentShape(keep, neurons)
    return shape.cut(model), shape
