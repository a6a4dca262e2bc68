"""The benchmark-only backend: every route answers, with fixed outputs and no model run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.api.app import create_app
from app.config import Settings
from tests.integration.test_hardening import running


async def test_benchmark_fixed_serves_every_route_without_a_model(default_models: Path) -> None:
    app = create_app(Settings(models_dir=default_models, backend="benchmark-fixed"))
    async with running(app) as client:
        models = {m["name"]: m for m in (await client.get("/models")).json()["models"]}
        assert {m["backend"] for m in models.values()} == {"benchmark-fixed"}
        encoded = (await client.post("/encode", json={"inputs": ["one", "two words"]})).json()
        vectors = np.array(encoded["embeddings"])
        assert vectors.shape == (2, 384)
        np.testing.assert_allclose(vectors[0], vectors[1])  # the same vector for any text
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
        classified = await client.post("/classify", json={"inputs": "fine"})
        assert classified.status_code == 200
        attention = await client.post("/attention", json={"inputs": "three words here"})
        maps = np.array(attention.json()["attentions"])
        np.testing.assert_allclose(maps.sum(axis=-1), 1.0, atol=1e-3)
