"""IO binding (ONNX Runtime's path on CUDA), run here on the CPU provider, which binds too:
inputs uploaded ahead of a pass give the same outputs as a plain run, and a pipeline over
a binding backend prepares its passes with the inputs already uploaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from app.backends.onnx import OnnxBackend
from app.engine.models.tokenization import TextTokenizer
from app.engine.passes.pipeline import Pipeline

MINILM = Path(__file__).resolve().parents[2] / "models" / "minilm"
TEXTS = ["a short one", "a somewhat longer text, to pad the other rows of the pass", "hi"]


@pytest.fixture(scope="module")
def graph() -> Path:
    path = MINILM / "model.onnx"
    if not path.is_file():
        pytest.fail("models/minilm is not built: run `make models`")
    return path


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer(MINILM / "tokenizer.json", 256)


def test_binding_is_for_cuda_unless_asked(graph: Path) -> None:
    assert not OnnxBackend(graph, threads=1, device="cpu").binds
    assert OnnxBackend(graph, threads=1, device="cpu", io_binding=True).binds


def test_uploaded_inputs_give_the_outputs_of_a_plain_run(
    graph: Path, tokenizer: TextTokenizer
) -> None:
    plain = OnnxBackend(graph, threads=1, device="cpu")
    bound = OnnxBackend(graph, threads=1, device="cpu", io_binding=True)
    pipeline = Pipeline(tokenizer, plain, "mean", rows_per_pass=8)
    (batch,) = pipeline.prepare(tokenizer.encode(TEXTS))
    uploaded = bound.upload(batch.inputs)
    assert all(isinstance(value, ort.OrtValue) for value in uploaded.values())
    expected = plain.run(batch.inputs)["last_hidden_state"]
    np.testing.assert_allclose(bound.run(uploaded)["last_hidden_state"], expected, atol=1e-5)
    # Arrays not uploaded are bound (copied) at the pass, as before.
    np.testing.assert_allclose(bound.run(batch.inputs)["last_hidden_state"], expected, atol=1e-5)


def test_a_pipeline_over_a_binding_backend_uploads_as_it_prepares(
    graph: Path, tokenizer: TextTokenizer
) -> None:
    items = tokenizer.encode(TEXTS)
    plain = Pipeline(tokenizer, OnnxBackend(graph, threads=1, device="cpu"), "mean", 2)
    bound_backend = OnnxBackend(graph, threads=1, device="cpu", io_binding=True)
    bound = Pipeline(tokenizer, bound_backend, "mean", 2)
    passes = bound.prepare(items)
    assert [len(batch.indices) for batch in passes] == [2, 1]
    assert all(batch.feeds is not None for batch in passes)
    assert all(p.feeds is None for p in plain.prepare(items))
    vectors = bound.finish(passes, bound.run(passes))
    for got, want in zip(vectors, plain.forward(items), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
