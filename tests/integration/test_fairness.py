"""Fairness on the real model: a small request overtakes large ones queued ahead of it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from app.api.app import create_app
from app.config import Settings
from loadtest.texts import TextSource
from tests.integration.test_hardening import running

MAX_INPUTS = 256  # ENCODER_MAX_INPUTS_PER_REQUEST's default: a maximal request
MARKER = "xylophone"  # one token of the minilm vocabulary that the large texts never use


class PassRecorder:
    """The real backend; records, per forward pass, whether it held the marked input."""

    def __init__(self, real, marker_id: int) -> None:
        self.real = real
        self.name, self.device, self.packed = real.name, real.device, real.packed
        self.marker_id = marker_id
        self.passes: list[bool] = []

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.passes.append(bool((inputs["input_ids"] == self.marker_id).any()))
        return self.real.run(inputs)


async def test_a_single_text_runs_before_large_inputs_queued_ahead_of_it(
    default_models: Path,
) -> None:
    # One instance: the order of passes is the order of batches.
    app = create_app(Settings(models_dir=default_models, models=["minilm"], instances=1))
    async with running(app) as client:
        runner = app.state.server.engine.registry.runners["minilm"]
        marker_id = int(runner.pipeline.tokenize([MARKER])[0].ids[1])
        recorder = PassRecorder(runner.pipeline.backend, marker_id)
        runner.pipeline.backend = recorder
        source = TextSource(seed=11)
        large = [[text for text in source.take(MAX_INPUTS) if MARKER not in text] for _ in range(4)]
        # Four clients with maximal requests fill the queue first.
        heavy = [
            asyncio.ensure_future(client.post("/encode", json={"inputs": texts})) for texts in large
        ]
        queued = sum(map(len, large)) - 2 * runner.batcher.limits.max_batch_size
        while runner.batcher.pending < queued:
            await asyncio.sleep(0.005)
        # A fifth client sends one text.
        single = await client.post("/encode", json={"inputs": f"a {MARKER} concert"})
        assert single.status_code == 200
        responses = await asyncio.gather(*heavy)
        assert [response.status_code for response in responses] == [200] * 4
    marked = recorder.passes.index(True)
    # Large inputs queued before it were still waiting for passes after its own.
    assert recorder.passes.count(True) == 1
    assert len(recorder.passes) - marked - 1 >= 10, recorder.passes
