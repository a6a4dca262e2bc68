"""`export` records a sentence-transformers model's prompts in model.json, from its
config_sentence_transformers.json as TEI reads them, and the served model answers
`prompt_name` with them (a tiny BERT, exported for real)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.config import Settings
from app.engine.manifest import MANIFEST_FILE
from app.export.exporter import export_model
from tests.conftest import wait_ready
from tests.tiny_models import build_tiny_bert

PROMPTS = {"query": "query: ", "document": "passage: "}


def test_export_records_the_prompts_and_the_server_applies_them(tmp_path: Path) -> None:
    source = build_tiny_bert(tmp_path / "source")
    config = {"__version__": {"sentence_transformers": "3.0.0"}, "prompts": PROMPTS}
    (source / "config_sentence_transformers.json").write_text(json.dumps(config))
    plain = build_tiny_bert(tmp_path / "plain")  # no config: no prompts
    repo = tmp_path / "models"
    repo.mkdir()
    assert export_model(str(source), "tiny", repo).prompts == PROMPTS
    export_model(str(plain), "plain", repo)
    assert json.loads((repo / "tiny" / MANIFEST_FILE).read_text())["prompts"] == PROMPTS
    assert "prompts" not in json.loads((repo / "plain" / MANIFEST_FILE).read_text())

    with TestClient(create_app(Settings(models_dir=repo, warmup=False))) as client:
        wait_ready(client.get)
        listed = {m["name"]: m["prompts"] for m in client.get("/models").json()["models"]}
        assert listed == {"plain": {}, "tiny": PROMPTS}

        def encode(**fields: object) -> np.ndarray:
            body = {"inputs": "where is the station", "model": "tiny", **fields}
            response = client.post("/encode", json=body)
            assert response.status_code == 200, response.text
            return np.asarray(response.json()["embeddings"])

        named = encode(prompt_name="document")
        np.testing.assert_allclose(named, encode(prompt="passage: "), atol=1e-6)
        assert not np.allclose(named, encode(), atol=1e-3)
        refused = client.post(
            "/encode", json={"inputs": "x", "model": "plain", "prompt_name": "query"}
        )
        assert refused.status_code == 422
        assert "has none" in refused.json()["error"]["message"]
