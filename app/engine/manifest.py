"""The model manifest (`models/<name>/model.json`): what a model is and how to serve it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Task = Literal["embedding", "classification"]
Pooling = Literal["mean", "cls"]
MANIFEST_FILE = "model.json"


@dataclass
class ModelManifest:
    name: str
    task: Task
    source: str
    pooling: Pooling
    normalize: bool
    max_length: int
    dimensions: int
    num_layers: int
    num_heads: int
    tokenizer: str = "tokenizer.json"
    labels: list[str] = field(default_factory=list)
    # Graph file per precision ("fp32", "int8", "fp16"), the attention graph, and the
    # PyTorch weights directory ("torch").
    files: dict[str, str] = field(default_factory=dict)
    default_precision: str = "fp32"
    parity: dict[str, Any] = field(default_factory=dict)
    batching: dict[str, float] = field(default_factory=dict)  # per-model batch limit overrides
    # Classifiers: "multi_label_classification" scores each label with a sigmoid.
    problem_type: str | None = None
    # A head model: another model of the repository (`base`) runs the encoder, and the
    # small trained head in `head` turns its normalized pooled vector into logits.
    base: str | None = None
    head: str | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)  # e.g. dev accuracy, command

    @classmethod
    def read(cls, directory: Path) -> ModelManifest:
        data = json.loads((directory / MANIFEST_FILE).read_text())
        return cls(**data)

    def write(self, directory: Path) -> None:
        text = json.dumps(asdict(self), indent=2) + "\n"
        (directory / MANIFEST_FILE).write_text(text)
