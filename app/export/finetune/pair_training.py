"""`finetune --task rerank/embedding`'s training: the losses over (query, positive,
negatives) and the loop, with early stopping on the held-out MRR@10.

The losses are written here in a few lines rather than taken from sentence-transformers
(installed with the export extra): its losses take its own model classes
(SentenceTransformer, CrossEncoder) and are meant for its Trainer, which would replace
this project's loop (seeded order, progress lines, early stopping keeping the best
weights, LoRA through peft as for classifiers). They compute the same thing:

- embedding: sentence-transformers' MultipleNegativesRankingLoss (scale 20): cross-entropy
  of each query over the cosine of every positive and negative of the batch, its own
  positive the target (in-batch negatives, plus the mined ones); a batch entry with the
  same text as the query's positive is masked, not taught as a negative;
- rerank: a listwise softmax cross-entropy of the cross-encoder's scores over
  (positive, negatives) of each query, the positive the target.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import get_linear_schedule_with_warmup

from app.engine.contract import Pooling
from app.export.finetune.config import FinetuneConfig
from app.export.finetune.pairs import Pairs, text_key
from app.export.finetune.progress import TrainingProgress
from app.export.finetune.retrieval import (
    HeldOut,
    dense_ranks,
    reranked_ranks,
    retrieval_scores,
)
from app.export.finetune.training import EVAL_BATCH, TrainingRecord
from app.export.head_fit import adamw

MNRL_SCALE = 20.0  # sentence-transformers' MultipleNegativesRankingLoss default
EARLY_STOPPING_METRIC = "mrr_at_10"


@dataclass
class PairTrainingRecord(TrainingRecord):
    best_scores: dict[str, float | int] | None = None  # held-out figures at the best step


@dataclass(frozen=True)
class PairModel:
    """The model being tuned, with how it reads texts: an embedding model (pooled, normalized
    vectors) or a cross-encoder (one score per (query, document) pair)."""

    model: torch.nn.Module
    tokenizer: Any
    task: str  # "embedding" or "rerank"
    max_length: int
    pooling: Pooling = "mean"

    def encode(self, texts: list[str]) -> torch.Tensor:
        inputs = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        hidden = self.model(**inputs).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)

    def score(self, queries: list[str], documents: list[str]) -> torch.Tensor:
        inputs = self.tokenizer(
            queries,
            documents,
            padding=True,
            truncation="longest_first",
            max_length=self.max_length,
            return_tensors="pt",
        )
        logits: torch.Tensor = self.model(**inputs).logits[:, 0]
        return logits

    def loss(self, batch: Pairs, negatives: list[list[str]]) -> torch.Tensor:
        if self.task == "embedding":
            return self._contrastive_loss(batch, negatives)
        return self._listwise_loss(batch, negatives)

    def _contrastive_loss(self, batch: Pairs, negatives: list[list[str]]) -> torch.Tensor:
        documents = [*batch.positives, *(text for given in negatives for text in given)]
        scores = MNRL_SCALE * self.encode(batch.queries) @ self.encode(documents).T
        keys = [text_key(text) for text in documents]
        same = np.asarray([[key == keys[row] for key in keys] for row in range(len(batch))])
        np.fill_diagonal(same, False)  # its own positive stays: the target
        scores = scores.masked_fill(torch.from_numpy(same), float("-inf"))
        return F.cross_entropy(scores, torch.arange(len(batch)))

    def _listwise_loss(self, batch: Pairs, negatives: list[list[str]]) -> torch.Tensor:
        groups = [
            [positive, *given] for positive, given in zip(batch.positives, negatives, strict=True)
        ]
        width = max(len(group) for group in groups)
        queries = [query for query, group in zip(batch.queries, groups, strict=True) for _ in group]
        flat = self.score(queries, [text for group in groups for text in group])
        scores = torch.full((len(groups), width), float("-inf"))
        at = 0
        for row, group in enumerate(groups):
            scores[row, : len(group)] = flat[at : at + len(group)]
            at += len(group)
        return F.cross_entropy(scores, torch.zeros(len(groups), dtype=torch.long))

    def held_out_scores(self, held: HeldOut, candidates: np.ndarray | None) -> dict[str, Any]:
        """R@1, R@10, MRR@10 on the held-out part in the training process (eval mode)."""
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            if self.task == "embedding":
                queries = self._vectors(held.queries)
                pool = self._vectors(held.pool)
                ranks = dense_ranks(queries, pool, held.correct)
            else:
                assert candidates is not None
                scores = [
                    self._pair_scores(query, [held.pool[c] for c in chosen])
                    for query, chosen in zip(held.queries, candidates, strict=True)
                ]
                ranks = reranked_ranks(scores, candidates, held.correct)
        self.model.train(was_training)
        return retrieval_scores(ranks)

    def _vectors(self, texts: list[str]) -> np.ndarray:
        chunks = [
            self.encode(texts[start : start + EVAL_BATCH]).float().numpy()
            for start in range(0, len(texts), EVAL_BATCH)
        ]
        return np.concatenate(chunks)

    def _pair_scores(self, query: str, documents: list[str]) -> np.ndarray:
        return self.score([query] * len(documents), documents).float().numpy()


def train_pairs(
    tuned: PairModel,
    train: Pairs,
    negatives: list[list[str]],
    validate: Callable[[], dict[str, Any]],
    config: FinetuneConfig,
    *,
    stream: Any = None,
) -> PairTrainingRecord:
    """AdamW with warm-up and linear decay over the budget, as for classifiers; early
    stopping on the held-out MRR@10 (`validate`), the best weights restored at the end."""
    model = tuned.model
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    eval_every = config.eval_every or steps_per_epoch
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = adamw((p for _, p in trainable), config.learning_rate, config.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, round(config.warmup * total), total)
    generator = torch.Generator().manual_seed(config.seed)
    record = PairTrainingRecord()
    best: dict[str, torch.Tensor] = {}
    waited = 0
    show = TrainingProgress(total, config.batch_size, stream=stream)
    start = time.perf_counter()
    model.train()
    try:
        while record.steps < total:
            for batch in torch.randperm(len(train), generator=generator).split(config.batch_size):
                rows = batch.tolist()
                loss = tuned.loss(train.subset(rows), [negatives[i] for i in rows])
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
                optimizer.step()
                schedule.step()
                record.steps += 1
                record.examples += len(rows)
                record.losses.append(loss.item())
                show.step(record.steps, len(rows), record.losses[-1])
                if record.steps % eval_every == 0 or record.steps == total:
                    scores = validate()
                    metric = float(scores[EARLY_STOPPING_METRIC])
                    record.history.append(
                        {
                            "step": record.steps,
                            **{k: v for k, v in scores.items() if k != "queries"},
                        }
                    )
                    better = metric > record.best_accuracy
                    if better:
                        record.best_accuracy, record.best_step, waited = metric, record.steps, 0
                        record.best_scores = scores
                        best = {n: p.detach().clone() for n, p in trainable}
                    else:
                        waited += 1
                    show.write(
                        f"[eval] step {record.steps}: R@1 {scores['r_at_1']:.4f}, "
                        f"R@10 {scores['r_at_10']:.4f}, MRR@10 {metric:.4f}"
                        + (" (best)" if better else f" (best MRR@10 {record.best_accuracy:.4f})")
                    )
                    if waited >= config.patience:
                        record.stopped_early = True
                        break
                if record.steps >= total:
                    break
            if record.stopped_early:
                break
    finally:
        show.close()
    record.seconds = round(time.perf_counter() - start, 1)
    with torch.no_grad():
        parameters = dict(trainable)
        for name, value in best.items():
            parameters[name].copy_(value)
    model.eval()
    return record
