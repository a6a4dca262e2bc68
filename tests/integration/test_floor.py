"""The floor (loadtest/floor.py) answers each hot route as the benchmark-fixed server does:
the same shape and, since neither runs a model, the same values for the same text."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.api.app import create_app
from app.config import Settings
from loadtest.floor import CLASSIFIER, EMBEDDING_MODEL, Floor
from loadtest.front_end import running_floor
from tests.integration.test_hardening import running

TEXT = "The floor answers what the server answers, and does nothing else at all."
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/encode", {"inputs": TEXT}),
    ("/v1/embeddings", {"model": EMBEDDING_MODEL, "input": TEXT}),
    ("/classify", {"model": CLASSIFIER, "inputs": TEXT}),
]


def assert_same(floor: Any, server: Any, where: str = "") -> None:
    """Equal JSON values, floats to float32 precision (the vector is computed either way)."""
    if isinstance(server, dict):
        assert isinstance(floor, dict) and floor.keys() == server.keys(), where
        for key in server:
            assert_same(floor[key], server[key], f"{where}.{key}")
    elif isinstance(server, list):
        assert isinstance(floor, list) and len(floor) == len(server), where
        for index, (mine, theirs) in enumerate(zip(floor, server, strict=True)):
            assert_same(mine, theirs, f"{where}[{index}]")
    elif isinstance(server, float):
        assert isinstance(floor, float) and math.isclose(floor, server, rel_tol=1e-6), where
    else:
        assert type(floor) is type(server) and floor == server, where


async def test_floor_answers_every_route_as_the_benchmark_fixed_server(
    default_models: Path,
) -> None:
    floor = Floor.from_models(default_models)
    settings = Settings(
        models_dir=default_models, backend="benchmark-fixed", models=[EMBEDDING_MODEL, CLASSIFIER]
    )
    transport = httpx.ASGITransport(app=floor)
    async with (
        running(create_app(settings)) as server,
        httpx.AsyncClient(transport=transport, base_url="http://floor") as client,
    ):
        for path, body in REQUESTS:
            theirs = await server.post(path, json=body)
            mine = await client.post(path, json=body)
            assert (mine.status_code, theirs.status_code) == (200, 200), path
            assert mine.headers["content-type"] == "application/json"
            assert_same(mine.json(), theirs.json(), path)
        assert (await client.get("/ready")).status_code == 200
        assert (await client.post("/nowhere", json={})).status_code == 404
        assert (await client.post("/encode", content=b"{not json")).status_code == 400


async def test_floor_classify_scores_the_sentiment_labels(default_models: Path) -> None:
    transport = httpx.ASGITransport(app=Floor.from_models(default_models))
    async with httpx.AsyncClient(transport=transport, base_url="http://floor") as client:
        answer = (await client.post("/classify", json={"inputs": "fine"})).json()
    scores = answer["results"][0]
    assert [entry["label"] for entry in scores] == ["negative", "positive"]
    assert sum(entry["score"] for entry in scores) == pytest.approx(1.0)
    assert answer["usage"]["tokens"] == 3  # [CLS] fine [SEP]


def test_floor_serves_under_uvicorn_as_the_bench_starts_it() -> None:
    with (
        tempfile.TemporaryDirectory() as scratch,
        running_floor(Path(scratch) / "floor.log") as floor,
        httpx.Client(base_url=floor.url) as client,
    ):
        answers = [client.post(path, json=body) for path, body in REQUESTS]
        assert [answer.status_code for answer in answers] == [200, 200, 200]
        vector = np.array(answers[0].json()["embeddings"][0])
        assert vector.shape == (384,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, rel=1e-6)
        assert floor.cpu_seconds() > 0
