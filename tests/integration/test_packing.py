"""Packed rows on the real minilm graphs give each input the vector it gets alone; the bench's
engine limit measures packed rows beside padded batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.backends.onnx import OnnxBackend
from app.config import Settings
from app.engine.manifest import ModelManifest
from app.engine.passes.loading import load_runner
from app.engine.passes.pipeline import Pipeline, open_pipeline
from loadtest.engine import EngineJob, measure_engine, texts_needed
from loadtest.texts import TextSource

# Mixed lengths: many short texts share rows, the long one (truncated at 256) gets its own.
TEXTS = [*TextSource(seed=5).take(40), "word " * 300, "short", "a"]


def pipeline(model_dir: Path, precision: str, *, pack: bool) -> Pipeline:
    manifest = ModelManifest.read(model_dir)
    opened = open_pipeline(model_dir, manifest, precision, threads=2, device="cpu", pack=pack)
    assert opened.backend.packed is pack
    return opened


def vectors(pipeline: Pipeline, texts: list[str]) -> np.ndarray:
    return np.stack(pipeline.forward(pipeline.tokenize(texts)))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def minilm(default_models: Path) -> Path:
    return default_models / "minilm"


def test_packed_fp32_matches_each_input_run_alone(minilm: Path) -> None:
    packed = vectors(pipeline(minilm, "fp32", pack=True), TEXTS)
    alone = pipeline(minilm, "fp32", pack=False)
    reference = np.concatenate([vectors(alone, [text]) for text in TEXTS])
    np.testing.assert_allclose(packed, reference, atol=1e-5)


def test_packed_int8_stays_within_the_parity_gate(minilm: Path) -> None:
    if not (minilm / "model.int8.onnx").is_file():
        pytest.fail("models/minilm/model.int8.onnx is not built: run `make models`")
    # Dynamic quantization scales each pass by its own activations, so int8 vectors
    # depend a little on their batch mates, packed or padded alike: hold them to the gate.
    packed = vectors(pipeline(minilm, "int8", pack=True), TEXTS)
    fp32 = vectors(pipeline(minilm, "fp32", pack=False), TEXTS)
    assert cosines(packed, fp32).mean() >= 0.99


def test_the_attention_graph_is_never_packed(minilm: Path) -> None:
    backend = OnnxBackend(minilm / "attention.onnx", threads=1, device="cpu", pack=True)
    assert not backend.packed


def test_engine_limit_measures_padded_and_packed_batches_in_rounds(minilm: Path) -> None:
    sizes = (1, 4)
    job = EngineJob(
        minilm,
        "fp32",
        2,
        "cpu",
        sizes,
        TextSource(seed=9).take(texts_needed(sizes, 2)),
        0.05,
        rounds=2,
    )
    result = measure_engine(job)
    assert {(point.batch_size, point.batching) for point in result.points} == {
        (1, "sorted"),
        (1, "packed"),
        (4, "sorted"),
        (4, "packed"),
    }
    assert all(point.sequences_per_s > 0 and point.texts >= 2 for point in result.points)
    assert result.rounds == 2
    assert 0 < result.single_text_p50_ms <= result.single_text_p99_ms


@pytest.mark.parametrize(
    ("precision", "packing", "packed"),
    [("fp32", True, True), ("int8", True, True), ("fp32", False, False)],
)
def test_which_graphs_the_server_packs(
    minilm: Path, precision: str, packing: bool, packed: bool
) -> None:
    settings = Settings(
        models_dir=minilm.parent, packing=packing, device="cpu", precision=precision
    )
    runner = load_runner(minilm, ModelManifest.read(minilm), settings)
    assert runner.pipeline.backend.packed is packed
    assert runner.attention is not None and runner.attention_batcher is not None
    assert not runner.attention.backend.packed  # per-row maps must not mix inputs
    # Attention passes yield to embedding ones: its batcher enters the gate's secondary side.
    assert runner.attention_batcher._gate == runner.gate.secondary
