"""`finetune --task rerank/embedding`'s training: the losses over (query, positive,
negatives), run by `finetune`'s one training loop (training.py) with early stopping on the
held-out MRR@10.

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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from app.engine.contract import Pooling
from app.export.finetune.config import FinetuneConfig
from app.export.finetune.pairs import Pairs, text_key
from app.export.finetune.retrieval import (
    HeldOut,
    dense_ranks,
    reranked_ranks,
    retrieval_scores,
)
from app.export.finetune.training import EVAL_BATCH, Checked, TrainingRecord, train_loop

MNRL_SCALE = 20.0  # sentence-transformers' MultipleNegativesRankingLoss default
EARLY_STOPPING_METRIC = "mrr_at_10"


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
) -> TrainingRecord:
    """`train_loop` on (query, positive, negatives) rows with the task's loss, early
    stopping on the held-out MRR@10 (`validate`'s retrieval figures)."""

    def batch_loss(rows: list[int]) -> torch.Tensor:
        return tuned.loss(train.subset(rows), [negatives[i] for i in rows])

    def checked() -> Checked:
        scores = validate()
        figures = {k: v for k, v in scores.items() if k != "queries"}
        return Checked(float(scores[EARLY_STOPPING_METRIC]), "MRR@10", figures)

    record = TrainingRecord()
    train_loop(tuned.model, len(train), batch_loss, checked, config, record, stream=stream)
    return record
