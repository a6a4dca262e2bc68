"""The engine limit: the server's own tokenizer, ONNX backend and pooling, run in-process."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.backends.onnx import Device
from app.engine.manifest import ModelManifest
from app.engine.passes.pipeline import (
    CPU_ROWS_PER_PASS,
    normalize,
    open_pipeline,
    resolve_precision,
)
from loadtest.report import EnginePoint, EngineResult, PrecisionPoint

# Texts per batch size: enough length-sorted batches that a random sample of them is
# representative, and at least a few batches even at batch size 128.
WINDOW_TEXTS = 512
WARMUP_TEXTS = 64
# Precisions compared side by side (fp16 is a GPU graph), at these batch sizes, in rounds.
COMPARED_PRECISIONS = ("fp32", "int8")
COMPARED_BATCH_SIZES = (1, 8, 32)
COMPARE_ROUNDS = 2
# Rows of one padded pass: more than any batch size measured, so a batch is one pass.
ONE_PASS = 4096


def served_graph(model_dir: Path, precision: str) -> tuple[str, Path]:
    """The precision and graph file the server loads for this setting."""
    manifest = ModelManifest.read(model_dir)
    chosen = resolve_precision(manifest, precision)
    return chosen, model_dir / manifest.files[chosen]


@dataclass(frozen=True)
class EngineJob:
    """What to measure; picklable, because it runs in a fresh process."""

    model_dir: Path
    precision: str  # ENCODER_PRECISION: "auto" or a key of the manifest's files
    threads: int
    device: Device
    batch_sizes: tuple[int, ...]
    texts: list[str]  # fresh texts, consumed in order (each window by every batching)
    budget_s: float  # measuring time per batch size
    pack: bool = True  # ENCODER_PACKING: how the server batches (the limit measures both)
    rounds: int = 1  # sweeps of the engine limit, each point the median over them


class Pipeline:
    """Text in, normalized vector out: the server's own pipeline, batched two ways.

    Padded (the default): the batch runs as one pass, each text right-padded to the longest.
    Packed: texts share rows of the rewritten graph, in passes of at most
    `CPU_ROWS_PER_PASS` rows, as the server runs a queued batch.
    """

    def __init__(
        self, model_dir: Path, precision: str, threads: int, device: Device, pack: bool = False
    ) -> None:
        manifest = ModelManifest.read(model_dir)
        self._pipeline = open_pipeline(
            model_dir, manifest, precision, threads=threads, device=device, pack=pack
        )
        self.packed = self._pipeline.backend.packed
        self._pipeline.rows_per_pass = CPU_ROWS_PER_PASS if self.packed else ONE_PASS

    def embed(self, texts: list[str]) -> np.ndarray:
        pipeline = self._pipeline
        return normalize(np.stack(pipeline.forward(pipeline.tokenize(texts))))

    def batches(self, texts: list[str], batch_size: int, seed: int) -> list[list[str]]:
        """Padded passes need neighbours in length; packed rows take texts as they come."""
        if self.packed:
            return [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
        return length_sorted_batches(texts, batch_size, seed)


def length_sorted_batches(texts: list[str], batch_size: int, seed: int) -> list[list[str]]:
    """Batches of neighbours in length, in random order so a time budget samples them fairly."""
    ordered = sorted(texts, key=len)
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    random.Random(seed).shuffle(batches)
    return batches


def measure_batch_size(
    pipeline: Pipeline, texts: list[str], batch_size: int, budget_s: float
) -> tuple[EnginePoint, list[float]]:
    """Throughput at one batch size within the budget, and each batch's seconds."""
    seconds: list[float] = []
    done = 0
    for batch in pipeline.batches(texts, batch_size, seed=batch_size):
        started = time.perf_counter()
        pipeline.embed(batch)
        seconds.append(time.perf_counter() - started)
        done += len(batch)
        if sum(seconds) >= budget_s:
            break
    batching = "packed" if pipeline.packed else "sorted"
    return EnginePoint(batch_size, done / sum(seconds), done, batching), seconds


def _take(feed: Iterator[str], count: int) -> list[str]:
    texts = [text for _, text in zip(range(count), feed, strict=False)]
    if len(texts) < count:
        raise ValueError(f"the engine job needs {count} more texts than it was given")
    return texts


def measure_engine(job: EngineJob) -> EngineResult:
    """Each batch size padded and, where the graph takes them, in packed rows, on the same
    texts, in `job.rounds` rounds over the whole sweep; each point is the median of its
    rounds, and the limit is the best point. One text alone is timed padded.

    On this VM one measurement drifts by ±15 %, so the best of 16 single measurements
    would mostly pick the luckiest one and flatter the limit; medians of interleaved
    rounds do not.
    """
    padded = Pipeline(job.model_dir, job.precision, job.threads, job.device)
    packed = Pipeline(job.model_dir, job.precision, job.threads, job.device, pack=True)
    pipelines = [padded, packed] if packed.packed else [padded]
    feed = iter(job.texts)
    # The first passes allocate ORT's arena and warm caches; they are not the steady state.
    warmup = _take(feed, WARMUP_TEXTS)
    for pipeline in pipelines:
        for batch in length_sorted_batches(warmup, 32, seed=0):
            pipeline.embed(batch)
    rates: dict[tuple[int, str], list[float]] = {}
    texts: dict[tuple[int, str], int] = {}
    single: list[float] = []
    for round_number in range(1, job.rounds + 1):
        for batch_size in job.batch_sizes:
            window = _take(feed, max(WINDOW_TEXTS, 4 * batch_size))
            # Alternate which batching goes first, so neither always meets a cold cache.
            for pipeline in pipelines if round_number % 2 else pipelines[::-1]:
                point, seconds = measure_batch_size(pipeline, window, batch_size, job.budget_s)
                key = (batch_size, point.batching)
                rates.setdefault(key, []).append(point.sequences_per_s)
                texts[key] = texts.get(key, 0) + point.texts
                if batch_size == 1 and pipeline is padded:
                    single += seconds
                print(
                    f"  engine round {round_number} batch {batch_size:>3} {point.batching:>6}: "
                    f"{point.sequences_per_s:7.1f} sequences/s",
                    file=sys.stderr,
                    flush=True,
                )
    if not single:  # batch size 1 was not in the sweep: time a few texts alone anyway
        single = measure_batch_size(padded, _take(feed, 64), 1, job.budget_s / 2)[1]
    points = [
        EnginePoint(size, float(np.median(rounds)), texts[(size, batching)], batching)
        for (size, batching), rounds in rates.items()
    ]
    p50, p99 = np.percentile(np.array(single) * 1000, [50, 99])
    return EngineResult(job.threads, points, float(p50), float(p99), job.rounds)


def texts_needed(batch_sizes: tuple[int, ...], rounds: int = 1) -> int:
    """How many fresh texts `measure_engine` may consume for this sweep."""
    per_round = sum(max(WINDOW_TEXTS, 4 * size) for size in batch_sizes)
    return WARMUP_TEXTS + 64 + rounds * per_round


def compared_precisions(model_dir: Path) -> list[str]:
    """The model's CPU graph precisions, fp32 first; fewer than two means nothing to compare."""
    files = ModelManifest.read(model_dir).files
    return [precision for precision in COMPARED_PRECISIONS if precision in files]


def compare_precisions(job: EngineJob) -> list[PrecisionPoint]:
    """Each precision's throughput, batch sizes interleaved and on the same texts per round."""
    precisions = compared_precisions(job.model_dir)
    # Batched as the server batches them: packed rows where the graph takes them.
    pipelines = {
        p: Pipeline(job.model_dir, p, job.threads, job.device, pack=job.pack) for p in precisions
    }
    feed = iter(job.texts)
    warmup = _take(feed, WARMUP_TEXTS)
    for pipeline in pipelines.values():
        for batch in length_sorted_batches(warmup, 32, seed=0):
            pipeline.embed(batch)
    done: dict[tuple[str, int], tuple[int, float]] = {}
    for _ in range(COMPARE_ROUNDS):
        for batch_size in job.batch_sizes:
            window = _take(feed, max(WINDOW_TEXTS, 4 * batch_size))
            for precision, pipeline in pipelines.items():
                point, seconds = measure_batch_size(pipeline, window, batch_size, job.budget_s)
                texts, spent = done.get((precision, batch_size), (0, 0.0))
                done[(precision, batch_size)] = (texts + point.texts, spent + sum(seconds))
    return [
        PrecisionPoint(precision, batch_size, texts / spent)
        for (precision, batch_size), (texts, spent) in done.items()
    ]


def compare_texts_needed(batch_sizes: tuple[int, ...]) -> int:
    """How many fresh texts `compare_precisions` may consume."""
    return WARMUP_TEXTS + COMPARE_ROUNDS * sum(max(WINDOW_TEXTS, 4 * size) for size in batch_sizes)
