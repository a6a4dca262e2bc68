"""The student's speed-up: engine throughput of the teacher's and the student's fp32 graphs
at batch 32, measured in one sitting, alternating, as a ratio (absolute figures on a shared
machine move by ±15 % between runs; a ratio from alternating rounds does not)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from app.config import available_cores
from app.engine.manifest import ModelManifest
from app.engine.passes.pipeline import Pipeline, open_pipeline

BATCH = 32
TEXTS = 256  # per round: 8 batches
ROUNDS = 3


def _throughput(pipeline: Pipeline, texts: list[str]) -> float:
    start = time.perf_counter()
    for offset in range(0, len(texts), BATCH):
        pipeline.embed(texts[offset : offset + BATCH], normalized=False)
    return len(texts) / (time.perf_counter() - start)


def alternating_rates(pipelines: list[Pipeline], texts: list[str], rounds: int) -> list[float]:
    """Sequences/s of each pipeline over the same texts in batches of BATCH: the median of
    `rounds` rounds, the order of the pipelines turned around each round, after a warm-up."""
    for pipeline in pipelines:  # warm-up: first passes allocate
        pipeline.embed(texts[:BATCH], normalized=False)
    rates: list[list[float]] = [[] for _ in pipelines]
    for round_number in range(rounds):
        order = range(len(pipelines)) if round_number % 2 == 0 else reversed(range(len(pipelines)))
        for index in order:
            rates[index].append(_throughput(pipelines[index], texts))
    return [statistics.median(found) for found in rates]


def sample_of(texts: list[str], size: int = TEXTS) -> list[str]:
    return [texts[i % len(texts)] for i in range(size)] if texts else ["a"] * size


def engine_speedup(
    teacher: tuple[Path, ModelManifest],
    student: tuple[Path, ModelManifest],
    texts: list[str],
    *,
    rounds: int = ROUNDS,
    size: int = TEXTS,
) -> dict[str, Any]:
    """Sequences/s of each graph (tokenization included) over the same `size` texts in
    batches of BATCH, the median of `rounds` alternating rounds, and their ratio."""
    threads = available_cores()
    pipelines = [
        open_pipeline(directory, manifest, "fp32", threads=threads, device="cpu")
        for directory, manifest in (teacher, student)
    ]
    teacher_rate, student_rate = alternating_rates(pipelines, sample_of(texts, size), rounds)
    return {
        "ratio": round(student_rate / teacher_rate, 3),
        "teacher_sequences_per_s": round(teacher_rate, 1),
        "student_sequences_per_s": round(student_rate, 1),
        "batch_size": BATCH,
        "precision": "fp32",
        "texts_per_round": size,
        "rounds": rounds,
        "threads": threads,
        "method": "engine pipeline (tokenization included), alternating rounds, medians",
    }
