"""Retrieval figures of a held-out part of (query, positive) pairs: R@1, R@10 and MRR@10.

Each held-out query has one right answer, its positive, among the pool of every distinct
held-out positive (texts equal up to case and whitespace are one entry). An embedding model
ranks the whole pool; a reranker ranks the miner's top candidates, and a query whose
positive is not among them counts as missed (rank None), as it would be when served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.export.finetune.pairs import Pairs, text_key

CUTOFF = 10  # R@10 and MRR@10


@dataclass(frozen=True)
class HeldOut:
    queries: list[str]
    pool: list[str]  # the distinct held-out positives
    correct: list[int]  # each query's positive: its index in `pool`


def held_out(pairs: Pairs) -> HeldOut:
    index: dict[str, int] = {}
    pool: list[str] = []
    correct = []
    for positive in pairs.positives:
        key = text_key(positive)
        if key not in index:
            index[key] = len(pool)
            pool.append(positive)
        correct.append(index[key])
    return HeldOut(list(pairs.queries), pool, correct)


def rank_of(scores: np.ndarray, correct: int) -> int:
    """1 + the candidates scored strictly above the right one (a tie is not held against it)."""
    return 1 + int(np.sum(scores > scores[correct]))


def retrieval_scores(ranks: Sequence[int | None]) -> dict[str, float | int]:
    """R@1, R@10 and MRR@10 of the right answers' ranks (1 = first; None = not retrieved)."""
    found = np.asarray([rank if rank is not None else np.inf for rank in ranks], dtype=float)
    if found.size == 0:
        raise ValueError("no queries to score")
    reciprocal = np.where(found <= CUTOFF, 1.0 / found, 0.0)
    return {
        "queries": int(found.size),
        "r_at_1": round(float(np.mean(found <= 1)), 4),
        "r_at_10": round(float(np.mean(found <= CUTOFF)), 4),
        "mrr_at_10": round(float(np.mean(reciprocal)), 4),
    }


def dense_ranks(queries: np.ndarray, pool: np.ndarray, correct: Sequence[int]) -> list[int | None]:
    """Ranks of the right answers by dot product of (normalized) vectors over the whole pool."""
    ranks: list[int | None] = []
    for start in range(0, len(queries), 1024):  # bounded memory for large held-out parts
        scores = queries[start : start + 1024] @ pool.T
        for row, right in zip(scores, correct[start : start + 1024], strict=True):
            ranks.append(rank_of(row, right))
    return ranks


def top_candidates(queries: np.ndarray, pool: np.ndarray, depth: int) -> np.ndarray:
    """(queries, min(depth, pool)) pool indices, best first, by dot product."""
    depth = min(depth, len(pool))
    chosen = []
    for start in range(0, len(queries), 1024):
        scores = queries[start : start + 1024] @ pool.T
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        chosen.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(chosen) if chosen else np.zeros((0, depth), dtype=np.int64)


def reranked_ranks(
    scores: Sequence[np.ndarray], candidates: np.ndarray, correct: Sequence[int]
) -> list[int | None]:
    """Ranks of the right answers once each query's candidates are rescored; None where
    the right answer was not among the candidates."""
    ranks: list[int | None] = []
    for row, chosen, right in zip(scores, candidates, correct, strict=True):
        where = np.flatnonzero(chosen == right)
        ranks.append(rank_of(np.asarray(row), int(where[0])) if where.size else None)
    return ranks
