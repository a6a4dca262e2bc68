"""`finetune --task rerank/embedding`'s command line: its flags, the job they make, the
words that reproduce it, and its one-line summary.

Apart from app/export/finetune/ (whose package imports torch) so that building the
command line never imports torch, as app/export/method_advice.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.engine.manifest import ModelManifest
    from app.export.finetune import FinetuneConfig
    from app.export.finetune.pairs_command import PairJob

TASKS = ("classification", "rerank", "embedding")
TASK_ARGUMENT: dict[str, Any] = {
    "choices": TASKS,
    "default": "classification",
    "help": "classification (default): a labelled file; rerank: a cross-encoder, or "
    "embedding: an embedding model, on a file of (query, positive) pairs",
}
# Flags of the pair tasks: (type, default, help); None: the default is the flag's own.
PAIR_FLAGS: dict[str, tuple[type, Any, str]] = {
    "miner": (
        str,
        "minilm",
        "rerank/embedding: embedding model mining hard negatives "
        "(a repository model or a model directory; default minilm)",
    ),
    "hard_negatives": (int, 3, "rerank/embedding: mined negatives per pair (3; 0: none)"),
    "mine_depth": (
        int,
        20,
        "rerank/embedding: the miner's top-k searched for negatives; "
        "rerank is validated over it (20)",
    ),
    "near_duplicate": (
        float,
        0.9,
        "rerank/embedding: a mined candidate whose cosine to the "
        "pair's positive is at or above this is skipped (0.9)",
    ),
    "query_column": (str, "query", "rerank/embedding: the query column (default: query)"),
    "positive_column": (
        str,
        "positive",
        "rerank/embedding: the positive column (default: positive)",
    ),
    "negative_column": (
        str,
        None,
        "rerank/embedding: given negative column(s), comma-separated (default: none)",
    ),
}


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", **TASK_ARGUMENT)
    for name, (kind, default, text) in PAIR_FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=default, help=text)


def pair_job(
    args: argparse.Namespace, models_dir: Path, config: FinetuneConfig, command: str
) -> PairJob:
    from app.export.finetune.mining import MiningConfig
    from app.export.finetune.pairs import PairFormat
    from app.export.finetune.pairs_command import PairJob

    negatives = [c.strip() for c in (args.negative_column or "").split(",") if c.strip()]
    return PairJob(
        task=args.task,
        base=args.base,
        data=args.data,
        name=args.name,
        models_dir=models_dir,
        config=config,
        pair_format=PairFormat(args.query_column, args.positive_column, negatives),
        mining=MiningConfig(
            miner=args.miner,
            hard_negatives=args.hard_negatives,
            depth=args.mine_depth,
            near_duplicate=args.near_duplicate,
        ),
        eval_data=args.eval,
        command=command,
    )


def tune_on_pairs(
    args: argparse.Namespace, models_dir: Path, config: FinetuneConfig, command: str
) -> int:
    """`finetune --task rerank/embedding`: the model tuned and written, its figures said."""
    from app.export.finetune.pairs_command import finetune_pairs

    manifest = finetune_pairs(pair_job(args, models_dir, config, command))
    print(f"tuned '{manifest.name}' ({args.task}, {args.method}): {pairs_summary(manifest)}")
    return 0


def pair_words(args: argparse.Namespace) -> list[str]:
    """The pair flags that reproduce a run (those away from their defaults)."""
    if args.task == "classification":
        return []
    words = ["--task", args.task]
    for name, (_, default, _) in PAIR_FLAGS.items():
        if (value := getattr(args, name)) != default:
            words += ["--" + name.replace("_", "-"), str(value)]
    return words


def pairs_summary(manifest: ModelManifest) -> str:
    """A tuned reranker's or embedding model's held-out figures in one line."""
    scores = manifest.evaluation
    found, alone = scores.get("validation", {}), scores.get("miner_validation", {})
    return (
        f"held-out R@1 {found.get('r_at_1', 0):.4f}, R@10 {found.get('r_at_10', 0):.4f}, "
        f"MRR@10 {found.get('mrr_at_10', 0):.4f} (the miner alone: R@1 "
        f"{alone.get('r_at_1', 0):.4f}, MRR@10 {alone.get('mrr_at_10', 0):.4f})"
    )
