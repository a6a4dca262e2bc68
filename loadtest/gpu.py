"""GPU engine figures: the server's torch backend (and ONNX Runtime's CUDA provider, where
onnxruntime-gpu is installed) on an all-MiniLM-L6-v2-shaped encoder, tokenization included.

Run on a GPU machine from the repository root: `python -m loadtest.gpu --out DIR`. With
models/minilm built it uses the real weights; without, random weights of the same shape
(speed does not depend on the values). Writes gpu.json into DIR. `--device cpu` is a
smoke test of the script itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.backends.torch import TorchBackend
from app.engine.models.tokenization import TextTokenizer
from app.engine.passes.pipeline import Pipeline
from loadtest.texts import TextSource

ROOT = Path(__file__).resolve().parent.parent
MINILM = ROOT / "models" / "minilm"
BATCH_SIZES = (1, 8, 32, 128, 512)
ONE_PASS = max(BATCH_SIZES)  # every batch runs as one padded pass


def minilm_shaped_weights(scratch: Path) -> tuple[Path, str]:
    """The real weights where built, else a random model of the same architecture."""
    if (MINILM / "torch" / "config.json").is_file():
        return MINILM / "torch", "all-MiniLM-L6-v2 (real weights)"
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(scratch / "weights")
    return scratch / "weights", "all-MiniLM-L6-v2 shape, random weights"


def embed(backend: Any, tokenizer: TextTokenizer, texts: list[str]) -> np.ndarray:
    """The server's pipeline over `backend`: normalized mean-pooled vectors, one pass."""
    return Pipeline(tokenizer, backend, "mean", ONE_PASS).embed(texts)


def throughput(backend: Any, tokenizer: TextTokenizer, source: TextSource, size: int) -> float:
    """Sequences/s over length-sorted batches of fresh texts, for about two seconds."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < 2.0:
        texts = sorted(source.take(size * 4), key=len)
        for start in range(0, len(texts), size):
            embed(backend, tokenizer, texts[start : start + size])
            done += len(texts[start : start + size])
    return done / (time.perf_counter() - started)


def single_latency_ms(backend: Any, tokenizer: TextTokenizer, source: TextSource) -> float:
    samples = []
    for text in source.take(60):
        started = time.perf_counter()
        embed(backend, tokenizer, [text])
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples[10:])


def forward_only(backend: Any, tokenizer: TextTokenizer, source: TextSource, size: int) -> float:
    """Sequences/s without tokenization (inputs tokenized beforehand): the device's share,
    with padding and pooling, which are small beside the pass."""
    pipeline = Pipeline(tokenizer, backend, "mean", ONE_PASS)
    batches = [pipeline.tokenize(source.take(size)) for _ in range(8)]
    pipeline.forward(batches[0])
    started = time.perf_counter()
    for items in batches:
        pipeline.forward(items)
    return size * len(batches) / (time.perf_counter() - started)


def measure(name: str, backend: Any, tokenizer: TextTokenizer, seed: int) -> dict[str, Any]:
    source = TextSource(seed=seed)
    # A first pass per batch size selects kernels for the padded shapes it meets; fp16
    # especially is far slower until every shape has been seen once.
    for size in BATCH_SIZES:
        throughput(backend, tokenizer, source, size)
    points = {size: throughput(backend, tokenizer, source, size) for size in BATCH_SIZES}
    best = max(points, key=points.__getitem__)
    result = {
        "sequences_per_s": {str(size): round(value, 1) for size, value in points.items()},
        "best_batch_size": best,
        "best_sequences_per_s": round(points[best], 1),
        "single_text_ms": round(single_latency_ms(backend, tokenizer, source), 2),
        "forward_only_sequences_per_s_at_512": round(
            forward_only(backend, tokenizer, source, 512), 1
        ),
    }
    print(name, json.dumps(result), flush=True)
    return result


def measure_onnx_cuda(graph: Path, tokenizer: TextTokenizer, scratch: Path) -> dict[str, Any]:
    """The served ONNX graph on CUDA (IO binding), and the fp16 graph the exporter derives
    from it, each against the CPU provider's vectors for the same texts."""
    from app.backends.onnx import OnnxBackend
    from app.export.precision import convert_fp16

    check = TextSource(seed=7).take(64)
    reference = embed(OnnxBackend(graph, threads=8, device="cpu"), tokenizer, check)
    fp32 = OnnxBackend(graph, threads=8, device="auto")  # must pick CUDA by itself
    half_graph = scratch / "model.fp16.onnx"
    convert_fp16(graph, half_graph)
    fp16 = OnnxBackend(half_graph, threads=8, device="auto")
    report: dict[str, Any] = {"onnx_auto_device": [fp32.device, fp16.device]}
    for name, backend in (("fp32", fp32), ("fp16", fp16)):
        cosine = (embed(backend, tokenizer, check) * reference).sum(axis=1)
        report[f"onnx_cuda_{name}_min_cosine_to_cpu_fp32"] = round(float(cosine.min()), 6)
    report["onnx_cuda_fp32"] = measure("onnx cuda fp32", fp32, tokenizer, seed=3)
    report["onnx_cuda_fp16"] = measure("onnx cuda fp16", fp16, tokenizer, seed=4)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    import onnxruntime as ort
    import torch

    tokenizer = TextTokenizer(MINILM / "tokenizer.json", 256)
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "none (smoke test)",
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
    }
    with tempfile.TemporaryDirectory() as scratch:
        weights, report["weights"] = minilm_shaped_weights(Path(scratch))
        device = args.device
        fp32 = TorchBackend.load(weights, classifier=False, threads=8, device=device)
        fp16 = TorchBackend.load(weights, classifier=False, threads=8, device=device, half=True)
        check = TextSource(seed=7).take(64)
        cosine = (embed(fp32, tokenizer, check) * embed(fp16, tokenizer, check)).sum(axis=1)
        report["fp16_min_cosine_to_fp32"] = round(float(cosine.min()), 6)
        report[f"torch_{device}_fp32"] = measure("torch fp32", fp32, tokenizer, seed=1)
        report[f"torch_{device}_fp16"] = measure("torch fp16", fp16, tokenizer, seed=2)
        graph = MINILM / "model.onnx"
        if "CUDAExecutionProvider" in ort.get_available_providers() and graph.is_file():
            report.update(measure_onnx_cuda(graph, tokenizer, Path(scratch)))
        else:
            report["onnx_cuda"] = "not measured: onnxruntime-gpu is not installed here"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
