"""Which `finetune` method to try first, by the number of labelled rows: `finetune --help`
and README "Fine-tune a classifier" say it, from SST-2 measurements (subsets of its
training file, scored on its 872 dev sentences).

Apart from app/export/finetune/ (whose package imports torch) so that building the
command line never imports torch.
"""

from __future__ import annotations

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
    "help": "tune an encoder for classification on a labelled file",
    "description": "Tune an encoder for classification on a labelled file. " + METHOD_ADVICE,
}
METHOD_ARGUMENT: dict[str, Any] = {
    "default": "lora",
    "choices": ["lora", "full", "head"],
    "help": "lora (default): adapters on the encoder; full: every weight; head: a head on a "
    "repository model's frozen embeddings. A few hundred rows: try head first; a few "
    "thousand or more: lora (figures above)",
}
