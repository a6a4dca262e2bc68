"""Where `export` takes a model from, and what it refuses: Hub ids through the Hugging Face
cache (offline, against a cache laid out here), untrained heads, overwriting a model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.engine.manifest import ModelManifest
from tests.conftest import ROOT
from tests.tiny_models import build_tiny_bert

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-source"))


def lay_out_hub_cache(home: Path, repo_id: str, source: Path, refs: list[str]) -> None:
    """The Hugging Face cache as `hf download` leaves it: a snapshot per commit, refs."""
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(COMMIT)


def offline(home: Path) -> dict[str, str]:
    return {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def test_a_hub_id_exports_from_the_hugging_face_cache(tiny_source: Path, tmp_path: Path) -> None:
    home, repo = tmp_path / "hf", tmp_path / "models"
    lay_out_hub_cache(home, "acme/tiny-bert", tiny_source, ["main", "v1"])
    result = run_cli(
        "export", "acme/tiny-bert", "--name", "tiny", "--models-dir", str(repo), env=offline(home)
    )
    assert result.returncode == 0, result.stderr
    assert ModelManifest.read(repo / "tiny").source == "acme/tiny-bert"
    pinned = run_cli(
        "export", "acme/tiny-bert", "--revision", "v1", "--name", "pinned",
        "--models-dir", str(repo), env=offline(home),
    )  # fmt: skip
    assert pinned.returncode == 0, pinned.stderr
    assert ModelManifest.read(repo / "pinned").source == "acme/tiny-bert@v1"


def test_a_hub_id_not_in_the_cache_fails_in_one_line_saying_what_to_do(tmp_path: Path) -> None:
    result = run_cli(
        "export", "acme/not-downloaded", "--name", "x", "--models-dir", str(tmp_path / "m"),
        env=offline(tmp_path / "hf"),
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]  # after the progress line
    assert line.startswith("encoder-serve export: ")
    assert "not in the cache" in line and "offline mode (HF_HUB_OFFLINE) is on" in line
    assert "hf download acme/not-downloaded" in line


def test_a_classifier_without_a_trained_head_is_refused_unless_allowed(
    tiny_source: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "models"
    args = ["export", str(tiny_source), "--task", "classification", "--models-dir", str(repo)]
    refused = run_cli(*args, "--name", "random")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert "holds no trained classifier" in line and "classifier.weight" in line
    assert not (repo / "random").exists()
    allowed = run_cli(*args, "--name", "random", "--allow-untrained-head")
    assert allowed.returncode == 0, allowed.stderr
    assert ModelManifest.read(repo / "random").task == "classification"


def test_export_does_not_replace_a_model_without_force(tiny_source: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    args = ["export", str(tiny_source), "--name", "tiny", "--models-dir", str(repo)]
    assert run_cli(*args).returncode == 0
    graph = repo / "tiny" / "model.onnx"
    before = graph.stat().st_mtime_ns
    again = run_cli(*args)
    assert again.returncode == 2
    assert "already exists; pass --force to replace it" in again.stderr
    assert graph.stat().st_mtime_ns == before
    forced = run_cli(*args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert graph.stat().st_mtime_ns != before
