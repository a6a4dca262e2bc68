"""`finetune`'s settings: the training configuration per method and how to read the files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.export.labelled_data import LabelledTexts, read_labelled

Method = Literal["lora", "full", "head"]
METHODS: tuple[Method, ...] = ("lora", "full", "head")
# Per method, for the settings left unset (head: HeadConfig's, chosen on SST-2 held-out).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"epochs": 3, "batch_size": 32, "learning_rate": 5e-4, "weight_decay": 0.01},
    "full": {"epochs": 3, "batch_size": 32, "learning_rate": 5e-5, "weight_decay": 0.01},
    "head": {"epochs": 4, "batch_size": 256, "learning_rate": 1e-3, "weight_decay": 0.05},
}


@dataclass(frozen=True)
class FinetuneConfig:
    """Training settings; epochs, batch size, learning rate and weight decay left as None
    take the method's METHOD_DEFAULTS."""

    method: Method = "lora"
    epochs: int = None  # type: ignore[assignment]
    max_steps: int = 0  # 0: the epochs decide; else at most this many updates
    batch_size: int = None  # type: ignore[assignment]
    learning_rate: float = None  # type: ignore[assignment]
    weight_decay: float = None  # type: ignore[assignment]
    warmup: float = 0.06  # share of the updates spent warming the learning rate up
    max_length: int | None = None  # tokens per text, trained and served; None: the base's
    validation: float = 0.1  # share of the data held out when there is no --eval file
    eval_every: int = 0  # updates between validation passes; 0: once per epoch
    patience: int = 3  # validation passes without a better accuracy before stopping
    seed: int = 0
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    hidden: int = 1024  # method head: hidden ReLU units (0: linear)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for key, value in METHOD_DEFAULTS[self.method].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        counts = (self.epochs, self.batch_size, self.patience, self.lora_rank, self.lora_alpha)
        if min(counts) < 1 or min(self.max_steps, self.eval_every, self.hidden) < 0:
            raise ValueError("epochs, batch size, patience and LoRA rank/alpha must be >= 1")
        if not 0.0 < self.validation < 1.0:
            raise ValueError(f"validation share must be between 0 and 1, got {self.validation}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError("max length must be at least 2 tokens")


@dataclass(frozen=True)
class DataFormat:
    """How to read the labelled files: columns and label coding (see `read_labelled`)."""

    text_columns: list[str] = field(default_factory=list)
    label_column: str = "label"
    first_index: int = 0

    def read(self, path: Path, labels: list[str]) -> LabelledTexts:
        return read_labelled(
            path,
            labels,
            text_columns=self.text_columns,
            label_column=self.label_column,
            first_index=self.first_index,
        )
