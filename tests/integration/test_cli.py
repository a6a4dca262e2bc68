"""The command line: export a tiny model, skip when built, serve it, fail clearly on a bad model."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.config import Settings
from app.engine.manifest import ModelManifest
from tests.conftest import ROOT, start_server
from tests.tiny_models import build_tiny_bert


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source directory, model repository with the source exported as `tiny`)."""
    source = build_tiny_bert(tmp_path_factory.mktemp("tiny-source"))
    repo = tmp_path_factory.mktemp("repo")
    result = run_cli("export", str(source), "--name", "tiny", "--models-dir", str(repo))
    assert result.returncode == 0, result.stderr
    steps = re.findall(r"^\[(\d+)/(\d+)\]", result.stderr, re.MULTILINE)  # progress is shown
    assert steps[0][0] == "1" and steps[-1][0] == steps[-1][1] and len(steps) == int(steps[0][1])
    return source, repo


def test_export_writes_a_complete_model_with_parity_figures(tiny_repo: tuple[Path, Path]) -> None:
    _, repo = tiny_repo
    manifest = ModelManifest.read(repo / "tiny")
    assert manifest.task == "embedding" and manifest.pooling == "mean"
    assert manifest.dimensions == 32 and manifest.num_layers == 2 and manifest.num_heads == 2
    assert manifest.max_length == 128  # the position embeddings bound it
    parity = manifest.parity["fp32"]
    assert parity["min_cosine"] >= 0.9999 and parity["max_abs_diff"] < 1e-3
    assert parity["texts"] >= 24
    assert (repo / "tiny" / "model.onnx").is_file()
    assert (repo / "tiny" / "tokenizer.json").is_file()
    assert (repo / "tiny" / "torch" / "config.json").is_file()  # for ENCODER_BACKEND=torch
    assert not list(repo.glob(".tiny-*")), "scratch directory left behind"


def test_export_skips_a_built_model(tiny_repo: tuple[Path, Path]) -> None:
    source, repo = tiny_repo
    graph = repo / "tiny" / "model.onnx"
    before = graph.stat().st_mtime_ns
    result = run_cli(
        "export", str(source), "--name", "tiny", "--models-dir", str(repo), "--skip-existing"
    )
    assert result.returncode == 0 and "already built" in result.stdout
    assert graph.stat().st_mtime_ns == before


def test_export_of_a_missing_source_fails_clearly(tmp_path: Path) -> None:
    result = run_cli(
        "export", "no-such-model-package", "--name", "x", "--models-dir", str(tmp_path)
    )
    assert result.returncode != 0
    assert "neither a model directory nor an installed Python package" in result.stderr


def test_served_tiny_model_matches_pytorch_mean_pooling(
    tiny_repo: tuple[Path, Path], tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    source, repo = tiny_repo
    texts = ["hello world", "a somewhat longer sentence about tiny random models"]
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = ((states * mask).sum(1) / mask.sum(1)).numpy()

    live = start_server(tmp_path, {"ENCODER_MODELS_DIR": str(repo)})
    try:
        with live.client() as client:
            response = client.post("/encode", json={"inputs": texts, "normalize": False})
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json()["embeddings"], expected, atol=1e-4)
        # The serving process never loads torch (its shared library would be mapped).
        maps = Path(f"/proc/{live.process.pid}/maps").read_text()
        assert "libtorch" not in maps
    finally:
        live.stop()


def test_a_model_that_fails_to_load_stops_startup_naming_model_and_file(
    tiny_repo: tuple[Path, Path], tmp_path: Path
) -> None:
    _, repo = tiny_repo
    broken = tmp_path / "repo"
    shutil.copytree(repo / "tiny", broken / "tiny")
    (broken / "tiny" / "model.onnx").write_bytes(b"this is not an onnx graph")
    live = start_server(tmp_path, {"ENCODER_MODELS_DIR": str(broken)}, wait_ready=False)
    code = live.process.wait(120)
    assert code == 4  # the models cannot be served (README "Start-up errors and exit statuses")
    log = live.log()
    assert "model 'tiny'" in log and str(broken / "tiny" / "model.onnx") in log


def test_ready_is_503_until_models_are_loaded(default_models: Path) -> None:
    client = TestClient(create_app(Settings(models_dir=default_models)))  # lifespan not run
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "not_ready"
    assert client.get("/health").status_code == 200
    assert client.post("/encode", json={"inputs": "x"}).status_code == 503


def test_serve_options_come_from_flags_or_environment() -> None:
    from app.cli import build_parser
    from app.settings_cli import given_settings, load_settings

    args = build_parser().parse_args(["serve", "--port", "9123", "--models-dir", "elsewhere"])
    settings = load_settings(given_settings(args))
    assert settings.port == 9123 and settings.models_dir == Path("elsewhere")
    help_text = run_cli("serve", "--help").stdout
    for variable in ("ENCODER_HOST", "ENCODER_PORT", "ENCODER_MODELS_DIR"):
        assert variable in help_text
