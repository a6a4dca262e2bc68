"""`finetune --task rerank` and `--task embedding`: tune on (query, positive) pairs.

The steps of the classifier's `finetune` (app/export/finetune/command.py), in the same
order and with the same guarantees: every file and the miner checked before any training,
a seeded loop with early stopping (on the held-out MRR@10), the written graph parity-gated
and int8 only through its gate, a LoRA tune shipped as a delta (`rebuild`), everything
under a scratch directory renamed into place at the end (nothing half-written on an error
or Ctrl-C). Between reading and training, hard negatives are mined (app/export/finetune/
mining.py) and the miner's own figures on the held-out part are measured, the baseline.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from transformers import AutoTokenizer

from app.config import available_cores
from app.engine.contract import Pooling
from app.engine.manifest import ModelManifest, kept_default, model_name_error
from app.engine.passes.pipeline import Pipeline, open_pipeline
from app.export.delta import (
    export_classifier,
    model_for_task,
    reference_logits,
    replace_directory,
)
from app.export.finetune.base import lora_model, resolve_base
from app.export.finetune.config import FinetuneConfig
from app.export.finetune.mining import MiningConfig, mine_negatives, open_miner
from app.export.finetune.pair_training import PairModel, train_pairs
from app.export.finetune.pairs import PairFormat, prepare_pairs
from app.export.finetune.retrieval import (
    HeldOut,
    dense_ranks,
    held_out,
    reranked_ranks,
    retrieval_scores,
    top_candidates,
)
from app.export.finetune.saving import save_lora_delta, write_delta
from app.export.finetune.training import TrainingRecord, set_seed
from app.export.messages import messages_to, say
from app.export.source import loading, read_sentence_transformer_config

PairTask = Literal["rerank", "embedding"]
PAIR_TASKS: tuple[PairTask, ...] = ("rerank", "embedding")
RERANK_LABELS = ["score"]  # the cross-encoder's one output


@dataclass(frozen=True)
class PairJob:
    """One `finetune --task rerank/embedding` call's arguments."""

    task: PairTask
    base: str
    data: Path
    name: str
    models_dir: Path
    config: FinetuneConfig
    pair_format: PairFormat
    mining: MiningConfig
    eval_data: Path | None
    command: str


def finetune_pairs(job: PairJob, *, stream: Any = None) -> ModelManifest:
    """Tune `job.base` on the pairs of `job.data` and write model `job.name`.

    Bad input (files, columns, too few pairs, a miner that is not an embedding model, an
    unknown base) raises ValueError / OSError before any training.
    """
    if (invalid := model_name_error(job.name)) is not None:
        raise ValueError(invalid)
    if job.task not in PAIR_TASKS:
        raise ValueError(f"task must be one of {', '.join(PAIR_TASKS)}, got {job.task!r}")
    if job.config.method == "head":
        raise ValueError("--method head is for classification; use lora or full")
    with messages_to(stream):
        return _finetune_pairs(job)


def _finetune_pairs(job: PairJob) -> ModelManifest:
    config, mining = job.config, job.mining
    prepared = prepare_pairs(
        job.data,
        job.pair_format,
        validation_share=config.validation,
        seed=config.seed,
        eval_data=job.eval_data,
    )
    given = any(prepared.train.negatives)
    if job.task == "rerank" and mining.hard_negatives == 0 and not given:
        raise ValueError(
            "--task rerank learns from negatives: --hard-negatives of at least 1, "
            "or a --negative-column"
        )
    resolved = resolve_base(job.base, job.models_dir)
    miner = open_miner(mining.miner, job.models_dir)
    max_length = config.max_length or resolved.max_length
    train, validation = prepared.train.clipped(max_length), prepared.validation.clipped(max_length)
    say(
        f"[data] {len(train)} training pairs, {len(validation)} held-out pairs"
        f"{' (--eval)' if job.eval_data else ''}, {prepared.dropped} dropped (their query "
        "or positive is a held-out one's)"
    )
    mined = mine_negatives(miner, train, mining)
    say(
        f"[mine] {mining.miner}: up to {mining.hard_negatives} hard negatives per pair from "
        f"its top {mining.depth}; {mined.skipped_near_duplicates} near-duplicates of a "
        f"positive skipped (cosine >= {mining.near_duplicate}); {mined.short} pairs with fewer"
    )
    negatives = [a + b for a, b in zip(train.negatives, mined.negatives, strict=True)]
    held = held_out(validation)
    baseline, candidates = miner_baseline(miner, held, mining.depth)
    say(
        f"[eval] {mining.miner} alone on the held-out part: R@1 {baseline['r_at_1']:.4f}, "
        f"R@10 {baseline['r_at_10']:.4f}, MRR@10 {baseline['mrr_at_10']:.4f} "
        f"({len(held.queries)} queries, {len(held.pool)} documents)"
    )
    pooling: Pooling = "mean"
    with loading(job.base):
        if read_sentence_transformer_config(resolved.directory).pooling == "cls":
            pooling = "cls"
        tokenizer = AutoTokenizer.from_pretrained(resolved.directory)
        set_seed(config.seed)
        model = model_for_task(resolved.directory, job.task, RERANK_LABELS)
    if config.method == "lora":
        model = lora_model(model, config, embedding=job.task == "embedding")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"[model] {job.task}, {config.method}: {trainable:,} trainable parameters")
    tuned = PairModel(model, tokenizer, job.task, max_length, pooling)
    rerank_candidates = candidates if job.task == "rerank" else None
    job.models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        prefix=f".{job.name}-finetune-", dir=job.models_dir
    ) as scratch:
        work = Path(scratch)
        work.chmod(0o755)
        record = train_pairs(
            tuned, train, negatives, lambda: tuned.held_out_scores(held, rerank_candidates), config
        )
        say(
            f"[train] {record.steps} steps, {record.examples} pairs in {record.seconds:.0f} s; "
            f"best held-out MRR@10 {record.best_accuracy:.4f} at step {record.best_step}"
        )
        saved = None
        if config.method == "lora":
            tokenizer_file = resolved.directory / "tokenizer.json"
            trained = None
            if job.task == "embedding":
                trained = reference_logits(model, tokenizer_file, max_length, pooling)
            labels = RERANK_LABELS if job.task == "rerank" else []
            saved = save_lora_delta(
                model,
                tokenizer,
                work,
                resolved,
                labels,
                max_length,
                task=job.task,
                pooling=pooling if job.task == "embedding" else "cls",
                trained=trained,
            )
            merged, recorded, source = saved.merged, saved.recorded, saved.record["source"]
        else:
            merged, recorded, source = model, None, f"{resolved.source} (fine-tuned in full)"
        say("[export] exporting the tuned model (parity-gated); int8 where its gate passes")
        manifest = export_classifier(
            merged,
            resolved.directory,
            job.name,
            work,
            source=source,
            max_length=max_length,
            recorded=recorded,
            task=job.task,
        )
        directory = work / job.name
        evaluation = pairs_evaluation(directory, manifest, held, candidates, baseline, job)
        evaluation |= training_record(record, config, manifest, mined.skipped_near_duplicates)
        evaluation["train_pairs"] = len(train)
        manifest.evaluation = evaluation
        manifest.default = kept_default(job.models_dir / job.name)  # a --force replacement
        manifest.write(directory)
        if saved is not None:
            write_delta(saved, work, directory, manifest, evaluation)
        replace_directory(directory, job.models_dir / job.name)
    return manifest


def miner_baseline(miner: Pipeline, held: HeldOut, depth: int) -> tuple[dict[str, Any], np.ndarray]:
    """The miner's own figures over the whole held-out pool, and its top `depth` per query
    (the candidates a reranker rescores)."""
    queries, pool = miner.embed(held.queries), miner.embed(held.pool)
    scores = retrieval_scores(dense_ranks(queries, pool, held.correct))
    return scores, top_candidates(queries, pool, depth)


def served_scores(
    directory: Path, manifest: ModelManifest, precision: str, held: HeldOut, candidates: np.ndarray
) -> dict[str, Any]:
    """The written model's figures through the engine's pipeline, as served."""
    pipeline = open_pipeline(
        directory, manifest, precision, threads=available_cores(), device="cpu"
    )
    if manifest.task == "embedding":
        ranks = dense_ranks(pipeline.embed(held.queries), pipeline.embed(held.pool), held.correct)
    else:
        scores = []
        for query, chosen in zip(held.queries, candidates, strict=True):
            items = pipeline.tokenizer.encode_query_pairs(query, [held.pool[c] for c in chosen])
            scores.append(np.stack(pipeline.forward(items))[:, 0])
        ranks = reranked_ranks(scores, candidates, held.correct)
    return retrieval_scores(ranks)


def pairs_evaluation(
    directory: Path,
    manifest: ModelManifest,
    held: HeldOut,
    candidates: np.ndarray,
    baseline: dict[str, Any],
    job: PairJob,
) -> dict[str, Any]:
    validation = served_scores(directory, manifest, "fp32", held, candidates)
    over = (
        f"the miner's top {job.mining.depth}" if job.task == "rerank" else "all held-out positives"
    )
    say(
        f"[eval] held-out (served fp32 graph, over {over}): R@1 {validation['r_at_1']:.4f}, "
        f"R@10 {validation['r_at_10']:.4f}, MRR@10 {validation['mrr_at_10']:.4f}"
    )
    evaluation: dict[str, Any] = {
        "method": job.config.method,
        "task": job.task,
        "base": resolve_base(job.base, job.models_dir).source,
        "miner": job.mining.miner,
        "validation_source": "--eval file"
        if job.eval_data
        else f"{job.config.validation:.0%} of the pairs held out",
        "validation_ranked": over,
        "validation": validation,
        "miner_validation": baseline,
        "mining": asdict(job.mining),
        "command": job.command,
    }
    if "int8" in manifest.files:
        int8 = served_scores(directory, manifest, "int8", held, candidates)
        evaluation["validation_int8"] = int8
    return evaluation


def training_record(
    record: TrainingRecord, config: FinetuneConfig, manifest: ModelManifest, skipped: int
) -> dict[str, Any]:
    hyperparameters = {
        key: value
        for key, value in asdict(config).items()
        if key != "hidden" and (config.method == "lora" or not key.startswith("lora"))
    }
    hyperparameters["max_length"] = manifest.max_length
    return {
        "training": {
            "steps": record.steps,
            "pairs_seen": record.examples,
            "seconds": record.seconds,
            "best_step": record.best_step,
            "stopped_early": record.stopped_early,
            "loss_first_10_steps": record.mean_loss(first=True),
            "loss_last_10_steps": record.mean_loss(first=False),
            "history": record.history,
        },
        "hyperparameters": hyperparameters,
        "near_duplicates_skipped": skipped,
        "seed": config.seed,
    }
