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
    "up to a few thousand rows try --method head first (300 rows: head 0.732, lora "
    "0.564; 3,000 rows: head 0.789, and on held-out rows head 0.837 against lora's 0.827 "
    "after the first of its 3 epochs). With tens of thousands of rows use lora, the "
    "default: head levels off near 0.80 (30,000 rows: 0.805) where lora reached 0.874 "
    "on the whole set. Figures and commands: README 'Fine-tune a classifier'."
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
    "repository model's frozen embeddings. Up to a few thousand rows try head first, with "
    "tens of thousands lora (figures above)",
}
