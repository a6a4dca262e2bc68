"""`finetune --task rerank/embedding`'s pieces without a model: the retrieval figures on
hand-made rankings, the pairs files read and split without a leak, and the mining rule
(own positives and near-duplicates skipped) on hand-made vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.export.finetune.mining import MiningConfig, mine_negatives
from app.export.finetune.pairs import PairFormat, Pairs, prepare_pairs, read_pairs
from app.export.finetune.retrieval import (
    dense_ranks,
    held_out,
    rank_of,
    reranked_ranks,
    retrieval_scores,
    top_candidates,
)
from app.export.labelled_data import LabelledDataError


def test_retrieval_scores_of_hand_made_ranks() -> None:
    # Ranks 1, 2, 5, 11 and a miss: R@1 1/5, R@10 3/5, MRR@10 (1 + 1/2 + 1/5) / 5.
    scores = retrieval_scores([1, 2, 5, 11, None])
    assert scores == {"queries": 5, "r_at_1": 0.2, "r_at_10": 0.6, "mrr_at_10": 0.34}
    with pytest.raises(ValueError):
        retrieval_scores([])


def test_ranks_from_vectors_and_from_rescored_candidates() -> None:
    assert rank_of(np.array([0.1, 0.9, 0.5]), 2) == 2
    assert rank_of(np.array([0.5, 0.5]), 1) == 1  # a tie is not held against the answer
    pool = np.eye(3, dtype=np.float32)
    queries = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 0.6, 0.8]], dtype=np.float32)
    assert dense_ranks(queries, pool, [0, 0, 2]) == [1, 2, 1]
    top = top_candidates(queries, pool, 2)
    assert top.tolist() == [[0, 1], [1, 0], [2, 1]]  # best first; depth 2 of 3
    # Query 1's answer (0) is among its candidates; query 2's answer (0) is not.
    rescored = [np.array([0.2, 0.9]), np.array([0.3, 0.1])]
    assert reranked_ranks(rescored, top[1:], [0, 0]) == [1, None]


def test_held_out_pool_merges_copies() -> None:
    pairs = Pairs(["a", "b", "c"], ["Story one", "story  ONE", "Story two"], [[], [], []])
    held = held_out(pairs)
    assert held.pool == ["Story one", "Story two"] and held.correct == [0, 0, 1]


def test_pairs_files_with_given_negatives(tmp_path: Path) -> None:
    csv = tmp_path / "pairs.csv"
    csv.write_text("question,answer,hard1,hard2\nq1,a1,n1,\nq2,a2,n2,n3\n")
    form = PairFormat("question", "answer", ["hard1", "hard2"])
    pairs = read_pairs(csv, form)
    assert pairs.queries == ["q1", "q2"] and pairs.negatives == [["n1"], ["n2", "n3"]]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"query": "q", "positive": "p", "negative": ["x", "y"]}\n')
    assert read_pairs(jsonl, PairFormat(negative_columns=["negative"])).negatives == [["x", "y"]]
    with pytest.raises(LabelledDataError, match="no column named query"):
        read_pairs(csv, PairFormat())
    (tmp_path / "blank.csv").write_text("query,positive\nq, \n")
    with pytest.raises(LabelledDataError, match=r"blank.csv:2: the positive is empty"):
        read_pairs(tmp_path / "blank.csv", PairFormat())


def test_the_split_drops_training_pairs_sharing_a_held_out_text(tmp_path: Path) -> None:
    rows = [(f"query {i}", f"story {i % 20}") for i in range(40)]  # each story twice
    data = tmp_path / "pairs.csv"
    data.write_text("query,positive\n" + "".join(f"{q},{p}\n" for q, p in rows))
    prepared = prepare_pairs(data, PairFormat(), validation_share=0.2, seed=0, eval_data=None)
    assert len(prepared.validation) == 8
    held = set(prepared.validation.positives)
    assert not held & set(prepared.train.positives)
    assert len(prepared.train) + len(prepared.validation) + prepared.dropped == 40
    again = prepare_pairs(data, PairFormat(), validation_share=0.2, seed=0, eval_data=None)
    assert again.validation.queries == prepared.validation.queries  # the seed decides


class FixedMiner:
    """Vectors by text, as the miner's pipeline would give them (normalized)."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def embed(self, texts: list[str]) -> np.ndarray:
        found = np.asarray([self.vectors[text] for text in texts], dtype=np.float32)
        return found / np.linalg.norm(found, axis=1, keepdims=True)


def test_mining_skips_own_positives_and_near_duplicates() -> None:
    # "p1 copy" is another outlet's p1 (cosine 0.99): a right answer, not a negative.
    miner = FixedMiner(
        {
            "q1": [1, 0, 0],
            "p1": [1, 0.05, 0],
            "p1 copy": [1, 0.2, 0],
            "p2": [0.7, 0.7, 0],
            "p3": [0, 0.2, 1],
            "q2": [0.7, 0.7, 0],
            "q3": [0, 0, 1],
            "q4": [0, 1, 0],
        }
    )
    queries = ["q1", "q2", "q3", "q1", "q4"]
    positives = ["p1", "p2", "p3", "P1 ", "p1 copy"]  # "P1 " is p1 again
    pairs = Pairs(queries, positives, [[] for _ in queries])
    mined = mine_negatives(miner, pairs, MiningConfig(hard_negatives=1, near_duplicate=0.9))
    # For q1, "p1 copy" ranks above p2 but is p1's near-duplicate; p1 is q1's own answer.
    assert mined.negatives[0] == mined.negatives[3] == ["p2"]
    assert mined.negatives[1] == ["p1 copy"]  # for q2 it is not near p2: a fair negative
    assert mined.skipped_near_duplicates >= 1
    none = mine_negatives(miner, pairs, MiningConfig(hard_negatives=0))
    assert none.negatives == [[] for _ in queries]


def test_mining_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        MiningConfig(near_duplicate=0.0)
    with pytest.raises(ValueError):
        MiningConfig(depth=0)
