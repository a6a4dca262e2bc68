"""Model instances on the real model: batches run on every instance, answers are unchanged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from app.api.app import create_app
from app.config import Settings
from loadtest.texts import TextSource
from tests.integration.test_hardening import running


async def test_two_instances_answer_concurrent_requests_like_one(default_models: Path) -> None:
    texts = TextSource(seed=21).take(48)
    answers = {}
    for instances in (1, 2):
        settings = Settings(
            models_dir=default_models, models=["minilm"], instances=instances, max_batch_size=4
        )
        app = create_app(settings)
        async with running(app) as client:
            (model,) = (await client.get("/models")).json()["models"]
            assert model["instances"] == instances
            responses = await asyncio.gather(
                *(client.post("/encode", json={"inputs": text}) for text in texts)
            )
            assert [response.status_code for response in responses] == [200] * len(texts)
            answers[instances] = np.array([r.json()["embeddings"][0] for r in responses])
            metrics = (await client.get("/metrics")).text
        per_instance = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("encoder_instance_batches_total{") and 'model="minilm"' in line
        ]
        assert len(per_instance) == instances
        assert all(count > 0 for count in per_instance), per_instance  # every instance ran
    # Each text's vector does not depend on the instance that ran it (fp32, packed rows).
    np.testing.assert_allclose(answers[2], answers[1], atol=1e-5)
