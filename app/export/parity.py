"""Parity of an exported graph against the PyTorch model it came from, through the pipeline."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.backends.onnx import OnnxBackend
from app.engine.manifest import Pooling
from app.engine.models.tokenization import TextTokenizer
from app.engine.passes.pipeline import OFFLINE_BATCH, Pipeline

# Short to long, plain to odd: the lengths exercise padding inside one batch, and the
# last texts run past typical max lengths so truncation is covered too.
_SENTENCES = [
    "Hello world.",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "The new vaccine showed strong results in the clinical trial.",
    "I absolutely loved this movie, the acting was superb!",
    "This was the worst meal I have ever had; never again.",
    "Quantum computers use qubits that can be in superposition.",
    "¿Dónde está la biblioteca? Je ne sais pas. 東京は日本の首都です。",
    "Emoji and symbols: 🚀 100% #launch @team <html> & 3.14159",
    "The committee will review the proposal next Tuesday at 10am.",
    "Photosynthesis converts light energy into chemical energy in plants.",
]


def parity_texts() -> list[str]:
    """A few dozen deterministic texts of mixed length (single words to several hundred tokens)."""
    texts = ["word", *_SENTENCES]
    for n in range(2, 13, 2):
        texts.append(" ".join(_SENTENCES[:n]))
    texts.extend(f"{a} {b}" for a, b in zip(_SENTENCES, reversed(_SENTENCES), strict=True))
    texts.append(" ".join(_SENTENCES * 6))  # far past 256 tokens
    return texts


@dataclass(frozen=True)
class ParityReport:
    texts: int
    max_abs_diff: float  # over every non-padding token state (or logit)
    min_cosine: float  # of pooled (normalized where the model normalizes) vectors

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def graph_pipeline(
    graph: Path, tokenizer: TextTokenizer, pooling: Pooling, threads: int = 0
) -> Pipeline:
    """A graph file under check, on the CPU, in padded passes (what every provider runs)."""
    backend = OnnxBackend(graph, threads=threads, device="cpu")
    return Pipeline(tokenizer, backend, pooling, OFFLINE_BATCH)


def compare(reference: Pipeline, candidate: Pipeline, texts: list[str]) -> ParityReport:
    """Token states (a classifier's logits) compared value by value, and the served vectors
    (pooled and normalized, through the same pipeline) by cosine."""
    pairs = zip(reference.token_states(texts), candidate.token_states(texts), strict=True)
    max_abs = max(float(np.abs(a - b).max()) for a, b in pairs)
    cosines = (reference.embed(texts) * candidate.embed(texts)).sum(axis=1)
    return ParityReport(len(texts), max_abs, float(cosines.min()))


def compare_attention(reference: Pipeline, candidate: Pipeline, texts: list[str]) -> float:
    """Max abs difference of attention probabilities over the real tokens of `texts`."""
    items = reference.tokenize(texts)
    pairs = zip(reference.attention_maps(items), candidate.attention_maps(items), strict=True)
    return max(float(np.abs(a - b).max()) for a, b in pairs)
