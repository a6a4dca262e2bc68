"""A regression classifier answers its output, not a softmax over one value (always 1)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np

from app.engine.models.encoder import EncoderOutput
from app.engine.models.served import ServedModel


class FixedEncoder:
    async def run(self, texts, *, truncate: bool = True, direction: str = "right") -> EncoderOutput:
        return EncoderOutput(np.full((len(texts), 1), 2.5, dtype=np.float32), 3 * len(texts))


def test_a_regression_model_scores_its_raw_output() -> None:
    manifest = SimpleNamespace(
        name="quality", task="classification", labels=["score"], problem_type="regression"
    )
    model = ServedModel(manifest, FixedEncoder())  # type: ignore[arg-type]
    result = asyncio.run(model.classify(["a text", "another"]))
    assert [[(s.label, s.score) for s in scores] for scores in result.results] == [
        [("score", 2.5)],
        [("score", 2.5)],
    ]
