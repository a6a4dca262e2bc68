"""`serve --model-id ORG/NAME`: Hub models served from a Hugging Face cache laid out here
(offline), with the repository's own ONNX export or exported once, and reused next time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.engine.manifest import ModelManifest
from app.hub_models import STAMP_FILE, HubModelError, cache_name, prepare
from tests.conftest import ROOT, free_port, stop_process, wait_ready
from tests.tiny_models import build_tiny_bert

pytestmark = pytest.mark.slow

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def lay_out_hub_cache(home: Path, repo_id: str, source: Path) -> Path:
    """The Hugging Face cache as `hf download` leaves it: a snapshot, and `main` naming it."""
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache with `acme/tiny-onnx` (weights and its own onnx/model.onnx, as
    sentence-transformers repositories ship) and `acme/tiny-plain` (weights only)."""
    import torch
    from transformers import BertModel

    from app.backends.torch import model_input_names
    from app.export.exporter import export_graph

    source = build_tiny_bert(tmp_path_factory.mktemp("tiny"))
    home = tmp_path_factory.mktemp("hf")
    with_onnx = lay_out_hub_cache(home, "acme/tiny-onnx", source)
    (with_onnx / "onnx").mkdir()
    model = BertModel.from_pretrained(source).eval()
    with torch.no_grad():
        export_graph(
            model, with_onnx / "onnx" / "model.onnx", model_input_names(model), "last_hidden_state"
        )
    lay_out_hub_cache(home, "acme/tiny-plain", source)
    return home


def serve_once(home: Path, cache: Path, *args: str) -> tuple[int, str, dict[str, object]]:
    """Start `serve` with `args`, wait for /ready, embed one text, stop: (status, stderr,
    the /encode answer)."""
    port = free_port()
    env = {
        **os.environ,
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "ENCODER_MODEL_CACHE_DIR": str(cache),
        "ENCODER_WARMUP": "false",
    }
    env.pop("ENCODER_MODELS_DIR", None)
    command = [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)]
    errors = cache.parent / f"stderr-{port}.txt"
    with errors.open("w") as stderr:
        process = subprocess.Popen(
            [*command, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(
            lambda path: httpx.get(url + path, timeout=2),
            timeout=300,
            alive=lambda: process.poll() is None,
        )
        answer = httpx.post(url + "/encode", json={"inputs": ["a tiny test"]}, timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
    except RuntimeError:
        body = {}
    status = stop_process(process)
    return status, errors.read_text(), body


def test_a_repository_onnx_export_is_served_then_reused(hub_home: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _, said, body = serve_once(hub_home, cache, "--model-id", "acme/tiny-onnx")
    assert body, said
    assert body["model"] == "acme--tiny-onnx" and body["dimensions"] == 32
    assert "serving the repository's own ONNX export" in said
    prepared = cache / "acme--tiny-onnx"
    manifest = ModelManifest.read(prepared)
    assert manifest.source == f"acme/tiny-onnx@{COMMIT}"
    # torch is installed here, so the graph was held to its PyTorch weights.
    assert manifest.parity["fp32"]["min_cosine"] > 0.9999
    assert json.loads((prepared / STAMP_FILE).read_text())["commit"] == COMMIT
    graph = (prepared / "model.onnx").stat()

    _, said, body = serve_once(hub_home, cache, "--model-id", "acme/tiny-onnx")
    assert body["model"] == "acme--tiny-onnx", said
    assert "reusing" in said and "serving the repository's own" not in said
    reused = (prepared / "model.onnx").stat()
    assert (reused.st_ino, reused.st_mtime_ns) == (graph.st_ino, graph.st_mtime_ns)


def test_a_repository_without_onnx_is_exported_once(hub_home: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _, said, body = serve_once(hub_home, cache, "--model-id", "acme/tiny-plain")
    assert body, said
    assert body["model"] == "acme--tiny-plain" and body["dimensions"] == 32
    assert "exporting it once" in said
    prepared = cache / "acme--tiny-plain"
    assert ModelManifest.read(prepared).files["attention"] == "attention.onnx"
    graph = (prepared / "model.onnx").stat()

    # The TEI variable, with a pooling of its own: prepared again (the stamp differs), and
    # the second start with the same pooling reuses that.
    _, said, body = serve_once(hub_home, cache, "--model-id", "acme/tiny-plain", "--pooling", "cls")
    assert body["model"] == "acme--tiny-plain", said
    assert ModelManifest.read(prepared).pooling == "cls"
    _, said, body = serve_once(hub_home, cache, "--model-id", "acme/tiny-plain", "--pooling", "cls")
    assert "reusing" in said and "exporting" not in said, said
    assert (prepared / "model.onnx").stat().st_ino != graph.st_ino  # the cls one, kept


def settings_for(home: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return Settings(model_cache_dir=cache)


def test_without_the_export_extra_a_repository_without_onnx_names_the_extra(
    hub_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(hub_home, tmp_path / "cache", monkeypatch)
    monkeypatch.setattr("app.hub_models.export_extra_installed", lambda: False)
    with pytest.raises(HubModelError, match=r"pip install 'encoder-serve\[export\]'"):
        prepare("acme/tiny-plain", settings, print)


def test_without_torch_the_repository_graph_is_served_unchecked(
    hub_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(hub_home, tmp_path / "cache", monkeypatch)
    monkeypatch.setattr("app.hub_models.export_extra_installed", lambda: False)
    name = prepare("acme/tiny-onnx", settings, print)
    manifest = ModelManifest.read(tmp_path / "cache" / name)
    assert "torch is not installed" in manifest.parity["fp32"]["skipped"]
    assert (manifest.pooling, manifest.max_length, manifest.dimensions) == ("mean", 128, 32)


def test_a_hub_id_not_in_the_cache_stops_start_up_in_one_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "ENCODER_MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "MODEL_ID": "acme/not-downloaded",  # TEI's variable
        "ENCODER_PORT": str(free_port()),
        "ENCODER_HOST": "127.0.0.1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "app", "serve"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "MODEL_ID (TEI) is read as ENCODER_MODEL_ID" in lines[0]
    assert (
        lines[-1].startswith("encoder-serve: 'acme/not-downloaded'") and "hf download" in lines[-1]
    )


def test_cache_names_are_model_names() -> None:
    from app.engine.manifest import model_name_error

    assert cache_name("BAAI/bge-small-en-v1.5", None) == "BAAI--bge-small-en-v1.5"
    assert cache_name("acme/x", "refs/pr/2") == "acme--x--refs-pr-2"
    long = cache_name("an-organisation-with-a-long-name/" + "m" * 60, "v1")
    assert len(long) == 64 and model_name_error(long) is None


def test_ids_and_revisions_each_get_a_model_of_their_own(
    hub_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.cli import build_parser
    from app.hub_models import prepare_hub_models
    from app.settings_cli import given_settings

    settings_for(hub_home, tmp_path / "cache", monkeypatch)
    monkeypatch.setattr("app.hub_models.export_extra_installed", lambda: False)
    args = build_parser().parse_args(
        ["serve", "--model-id", "acme/tiny-onnx", "--model-id", "acme/tiny-onnx@main",
         "--model-cache-dir", str(tmp_path / "cache")]
    )  # fmt: skip
    settings = prepare_hub_models(Settings(**given_settings(args)), print)
    assert settings.models == ["acme--tiny-onnx", "acme--tiny-onnx--main"]
    assert settings.models_dir == tmp_path / "cache"
    stamp = json.loads((tmp_path / "cache" / "acme--tiny-onnx--main" / STAMP_FILE).read_text())
    assert (stamp["revision"], stamp["commit"]) == ("main", COMMIT)
    # --revision applies to the ids without one of their own.
    pinned = Settings(
        model_id=["acme/tiny-onnx"], revision="main", model_cache_dir=tmp_path / "cache"
    )
    assert prepare_hub_models(pinned, print).models == ["acme--tiny-onnx--main"]
