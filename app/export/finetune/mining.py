"""Hard negatives for (query, positive) pairs, mined with a served embedding model.

The miner (`--miner`, default `minilm`) embeds every query and every distinct positive of
the file; a pair's negatives are the positives of other pairs that rank highest for its
query, within the miner's top `depth`. The rule that keeps right answers out:

- a candidate is skipped when it is a positive of the same query (any pair's), or its text
  equals the pair's positive up to case and whitespace;
- or when its cosine to the pair's positive, under the miner, is at or above
  `near_duplicate` (0.9): AG News carries the same story from several outlets, and such a
  "negative" is really another right answer, which would teach the model to push it away.

The first `hard_negatives` candidates left, best ranked first, are the pair's negatives
(fewer when fewer are left). The same top-`depth` lists are the candidates a reranker is
validated on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.config import available_cores
from app.engine.manifest import MANIFEST_FILE, ModelManifest
from app.engine.passes.pipeline import Pipeline, open_pipeline
from app.export.finetune.pairs import Pairs, text_key
from app.export.finetune.retrieval import top_candidates


@dataclass(frozen=True)
class MiningConfig:
    miner: str = "minilm"  # a repository model or a model directory; task embedding
    hard_negatives: int = 3  # mined negatives per pair (0: none)
    depth: int = 20  # the miner's top-k searched for negatives (rerank: validated on)
    near_duplicate: float = 0.9  # cosine to the positive at or above which one is skipped

    def __post_init__(self) -> None:
        if self.hard_negatives < 0 or self.depth < 1:
            raise ValueError("--hard-negatives must be >= 0 and --mine-depth >= 1")
        if not 0.0 < self.near_duplicate <= 1.0:
            raise ValueError(f"--near-duplicate must be in (0, 1], got {self.near_duplicate}")


def open_miner(miner: str, models_dir: Path) -> Pipeline:
    """The miner's fp32 pipeline, as served; not an embedding model is bad input."""
    directory = models_dir / miner
    if not (directory / MANIFEST_FILE).is_file():
        directory = Path(miner)
    if not (directory / MANIFEST_FILE).is_file():
        raise ValueError(
            f"--miner {miner}: no model of that name in {models_dir}, nor a model directory"
        )
    manifest = ModelManifest.read(directory)
    if manifest.task != "embedding":
        raise ValueError(
            f"--miner {miner}: a {manifest.task} model; negatives are mined with an "
            "embedding model (such as minilm)"
        )
    return open_pipeline(directory, manifest, "fp32", threads=available_cores(), device="cpu")


@dataclass(frozen=True)
class Mined:
    negatives: list[list[str]]  # per pair, best ranked first
    skipped_near_duplicates: int  # candidates left out by the near-duplicate rule
    short: int  # pairs with fewer than `hard_negatives` negatives left


def mine_negatives(miner: Pipeline, pairs: Pairs, config: MiningConfig) -> Mined:
    """Per pair, up to `config.hard_negatives` negatives by the rule of the module docstring."""
    if config.hard_negatives == 0:
        return Mined([[] for _ in range(len(pairs))], 0, 0)
    index: dict[str, int] = {}
    pool: list[str] = []
    for positive in pairs.positives:
        if text_key(positive) not in index:
            index[text_key(positive)] = len(pool)
            pool.append(positive)
    answers: dict[str, set[int]] = {}
    for query, positive in zip(pairs.queries, pairs.positives, strict=True):
        answers.setdefault(text_key(query), set()).add(index[text_key(positive)])
    pool_vectors = miner.embed(pool)
    query_vectors = miner.embed(pairs.queries)
    top = top_candidates(query_vectors, pool_vectors, config.depth)
    negatives: list[list[str]] = []
    skipped = short = 0
    for row, (query, positive) in enumerate(zip(pairs.queries, pairs.positives, strict=True)):
        own = index[text_key(positive)]
        right = answers[text_key(query)]
        chosen: list[str] = []
        for candidate in top[row]:
            if candidate in right:
                continue
            if float(pool_vectors[candidate] @ pool_vectors[own]) >= config.near_duplicate:
                skipped += 1
                continue
            chosen.append(pool[candidate])
            if len(chosen) == config.hard_negatives:
                break
        short += len(chosen) < config.hard_negatives
        negatives.append(chosen)
    return Mined(negatives, skipped, short)
