"""Parity of an exported graph against the PyTorch model it came from."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from app.engine.manifest import Pooling
from app.engine.pooling import normalize, pool

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


def compare_states(
    reference: np.ndarray, candidate: np.ndarray, attention_mask: np.ndarray, pooling: Pooling
) -> ParityReport:
    """Compare two (batch, tokens, hidden) outputs on real tokens and pooled vectors."""
    real = attention_mask.astype(bool)
    max_abs = float(np.abs(reference[real] - candidate[real]).max())
    a = normalize(pool(reference, attention_mask, pooling))
    b = normalize(pool(candidate, attention_mask, pooling))
    cosines = (a * b).sum(axis=1)
    return ParityReport(len(reference), max_abs, float(cosines.min()))


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> ParityReport:
    """Compare two (batch, labels) logit arrays."""
    max_abs = float(np.abs(reference - candidate).max())
    cosines = (normalize(reference) * normalize(candidate)).sum(axis=1)
    return ParityReport(len(reference), max_abs, float(cosines.min()))
