"""`compress`'s settings: which layers the student keeps, how it is trained and distilled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Method = Literal["lora", "full"]
METHODS: tuple[Method, ...] = ("lora", "full")
VectorLoss = Literal["cosine", "mse"]
VECTOR_LOSSES: tuple[VectorLoss, ...] = ("cosine", "mse")


@dataclass(frozen=True)
class CompressConfig:
    """How a student is made. `keep_layers` None: every other layer of the teacher, the last
    kept (1, 3, 5 of 6). `intermediate_size`: each kept block's feed-forward cut to its
    strongest neurons (app/export/layers.py); None keeps the teacher's width.

    `lora` trains adapters on the kept layers plus the pooler, classifier and norms; `full`
    trains every weight but the vocabulary's vectors. Either ships as a small delta on the
    teacher's own delta (a LoRA adapter; a 5-level change of weights, app/export/dense_delta.py).
    Embedding students are always trained in full.
    """

    keep_layers: str | None = None  # "0,3,5"; None: every other layer, ending with the last
    intermediate_size: int | None = None  # feed-forward neurons kept per block; None: all
    method: Method = "full"  # the better student on SST-2 (models/README.md), a small delta too
    temperature: float = 2.0  # softens both sides' logits for the distillation term
    label_weight: float = 0.5  # share of the loss on true labels, when the file has labels
    vector_loss: VectorLoss = "cosine"  # embedding students: 1 - cosine, or MSE on vectors
    epochs: int = 3
    max_steps: int = 0  # 0: the epochs decide; else at most this many updates
    batch_size: int = 32
    learning_rate: float = 1e-4  # full and embedding students; lora: 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.06
    max_length: int | None = None  # None: the teacher's
    validation: float = 0.1  # share held out when there is no --eval file
    eval_every: int = 0  # updates between validation passes; 0: once per epoch
    patience: int = 3
    seed: int = 0
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.vector_loss not in VECTOR_LOSSES:
            raise ValueError(
                f"--vector-loss must be one of {', '.join(VECTOR_LOSSES)}, got {self.vector_loss!r}"
            )
        counts = (self.epochs, self.batch_size, self.patience, self.lora_rank, self.lora_alpha)
        if min(counts) < 1 or min(self.max_steps, self.eval_every) < 0:
            raise ValueError("epochs, batch size, patience and LoRA rank/alpha must be >= 1")
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.label_weight <= 1.0:
            raise ValueError(f"--label-weight must be between 0 and 1, got {self.label_weight}")
        if not 0.0 < self.validation < 1.0:
            raise ValueError(f"--validation must be between 0 and 1, got {self.validation}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.intermediate_size is not None and self.intermediate_size < 1:
            raise ValueError(f"--intermediate-size must be >= 1, got {self.intermediate_size}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError("--max-length must be at least 2 tokens")
