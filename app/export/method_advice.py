"""Which `finetune` method to try first, by the number of labelled rows: `finetune --help`
and README "Fine-tune a classifier" say it, from SST-2 measurements (subsets of its
training file, scored on its 872 dev sentences).

Also `finetune`'s training flags. Apart from app/export/finetune/ (whose package imports
torch) so that building the command line never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

METHOD_ADVICE = (
    "Which method first, by labelled rows (SST-2 dev accuracy, each method's defaults): "
    "with a few hundred rows try --method head first (300 rows: head 0.732, lora 0.564, "
    "which barely moves in its 27 updates); from a few thousand rows use lora, the "
    "default (3,000 rows: lora 0.818, head 0.789; head levels off near 0.80: 0.805 at "
    "30,000 rows, where lora reached 0.874 on the whole set), though head stays the "
    "quicker try. Between 300 and 3,000 rows was not measured. Figures, times and "
    "commands: README 'Fine-tune a classifier'."
)

# `finetune`'s parser and its --method flag.
FINETUNE_COMMAND: dict[str, Any] = {
    "help": "tune an encoder: a classifier on a labelled file, or (--task rerank/embedding) "
    "a reranker or embedding model on (query, positive) pairs",
    "description": "Tune an encoder for classification on a labelled file, or with --task "
    "rerank/embedding a cross-encoder or an embedding model on a file of (query, positive) "
    "pairs, hard negatives mined with --miner (README 'Fine-tune a reranker or an "
    "embedding model on pairs'). " + METHOD_ADVICE,
}
METHOD_ARGUMENT: dict[str, Any] = {
    "default": "lora",
    "choices": ["lora", "full", "head"],
    "help": "lora (default): adapters on the encoder; full: every weight; head: a head on a "
    "repository model's frozen embeddings. A few hundred rows: try head first; a few "
    "thousand or more: lora (figures above)",
}

# Training flags of `finetune` (None: FinetuneConfig's default for the method).
FINETUNE_FLAGS: dict[str, tuple[type, str]] = {
    "epochs": (int, "passes over the training data (lora/full 3, head 4)"),
    "max_steps": (int, "stop after this many updates (0: the epochs decide)"),
    "batch_size": (int, "examples per update (lora/full 32, head 256)"),
    "learning_rate": (float, "peak AdamW learning rate (lora 5e-4, full 5e-5, head 1e-3)"),
    "weight_decay": (float, "AdamW weight decay (lora/full 0.01, head 0.05)"),
    "warmup": (float, "share of the updates warming the learning rate up (0.06)"),
    "max_length": (int, "tokens per text, trained and served (default: the base's)"),
    "validation": (float, "share held out for validation without --eval (0.1)"),
    "eval_every": (int, "updates between validation passes (0: once per epoch)"),
    "patience": (int, "validation passes without improvement before stopping (3)"),
    "seed": (int, "random seed: data order, initial head, dropout (0)"),
    "lora_rank": (int, "LoRA rank (8)"),
    "lora_alpha": (int, "LoRA alpha (16)"),
    "lora_dropout": (float, "LoRA dropout (0.1)"),
    "hidden": (int, "head method: hidden ReLU units, 0 for linear (1024)"),
}


def data_and_training_words(args: Any, training_flags: Iterable[str]) -> list[str]:
    """The flags of a training tool's command line (finetune, compress) that name its data
    files and columns and its training settings, as given: for the command a model's
    manifest records."""

    def given(flags: Iterable[str]) -> list[str]:
        return [
            word
            for flag in flags
            if (value := getattr(args, flag)) is not None
            for word in ("--" + flag.replace("_", "-"), str(value))
        ]

    words = given(("eval", "test", "text_column", "models_dir"))
    if args.label_column != "label":
        words += ["--label-column", args.label_column]
    if args.first_index:
        words += ["--first-index", str(args.first_index)]
    return words + given(training_flags)
