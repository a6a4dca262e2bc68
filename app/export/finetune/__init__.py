"""`finetune`: tune an encoder for sequence classification and write a served model directory.

Methods: `lora` (peft adapters on the encoder's linear layers, the pooler and classifier
trained in full; shipped as a small delta), `full` (every weight), and `head` (a head on the
frozen, served embeddings of a repository model: `train-head`). The training loop is plain
PyTorch (AdamW, transformers' linear schedule with warm-up); early stopping keeps the weights
of the best validation accuracy. Everything is written under a scratch directory beside the
target and renamed into place at the end, so an error or Ctrl-C leaves no half-written model.

One module per job:

- `config`: the training settings per method, and how the labelled files are read;
- `data`: the files read and checked and the validation split made, before any training;
- `base`: the base model resolved, LoRA adapters put on it;
- `training`: the training loop, early stopping, validation logits;
- `progress`: the progress bar or log lines of the loop;
- `saving`: the LoRA adapter saved as a delta and checked against the trained model;
- `evaluation`: the exported model scored as served, and the record of the run;
- `command`: `finetune` itself, the steps above in order.

`--task rerank` and `--task embedding` tune on (query, positive) pairs instead:

- `pairs`: the pairs files read and checked, and the held-out part split off;
- `mining`: hard negatives mined with a served embedding model, near-duplicates skipped;
- `retrieval`: R@1, R@10 and MRR@10 of a held-out part;
- `pair_training`: the losses (listwise for a reranker, in-batch contrastive for an
  embedding model) and their loop, early stopping on MRR@10;
- `pairs_command`: `finetune --task rerank/embedding` itself, in the order of `command`.
"""

from app.export.finetune.base import ResolvedBase, resolve_base
from app.export.finetune.command import finetune
from app.export.finetune.config import METHOD_DEFAULTS, METHODS, DataFormat, FinetuneConfig, Method
from app.export.finetune.data import PreparedData, prepare_data
from app.export.finetune.evaluation import score_model_directory
from app.export.finetune.progress import TrainingProgress
from app.export.finetune.training import TrainingRecord, model_logits, train_classifier

__all__ = [
    "METHODS",
    "METHOD_DEFAULTS",
    "DataFormat",
    "FinetuneConfig",
    "Method",
    "PreparedData",
    "ResolvedBase",
    "TrainingProgress",
    "TrainingRecord",
    "finetune",
    "model_logits",
    "prepare_data",
    "resolve_base",
    "score_model_directory",
    "train_classifier",
]
