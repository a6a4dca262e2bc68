"""`make models` leaves the committed files as they are and prints no expected library
warnings: its own commands (read from the Makefile) run into a scratch copy of the
committed model files, never into models/ itself."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.engine.manifest import PARITY_FILE, ModelManifest
from app.export.exporter import is_built
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

# What the libraries print while building when nothing hides it (see app/export/library_noise.py).
EXPECTED_NOISE = (
    "TracerWarning",
    "Exporting aten::",
    "LOAD REPORT",
    "newly initialized",
    "pre-processing before quantization",
    "Loading weights",
)


def committed_model_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "models"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [path for path in listed.stdout.split() if path != "models/README.md"]


def make_models_commands() -> list[list[str]]:
    """The `models:` recipe's encoder-serve commands, as the Makefile has them."""
    recipe = re.search(r"^models:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe, "no models target in the Makefile"
    commands = []
    for line in recipe.group(1).splitlines():
        line = re.sub(r"\$\(if (?:[^()]|\([^()]*\))*\)", "", line.strip())  # VERBOSE=1's switch
        words = shlex.split(line)
        assert words[0] == "$(BIN)/encoder-serve", line
        commands.append(words[1:])
    return commands


def test_the_checkout_models_match_what_is_committed() -> None:
    """`make test` runs `make models` first, so in a fresh clone this is `make models`
    leaving `git status` clean: no committed model file rewritten, nothing new unignored."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", "models"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert status.stdout == "", f"models/ differs from what is committed:\n{status.stdout}"


def test_a_rebuild_leaves_its_committed_files_unchanged_and_is_quiet(tmp_path: Path) -> None:
    """`make models`' rebuild command (read from the Makefile) on a scratch copy of one
    tuned model's committed files (topic: a delta merged, exported, quantized and checked,
    so every step that once rewrote model.json or printed library noise runs; minilm's
    plain export shares the exporter), never into models/ itself."""
    scratch = tmp_path / "models"
    files = [path for path in committed_model_files() if path.startswith("models/topic/")]
    assert "models/topic/model.json" in files
    assert any(path.endswith("/delta/delta.json") for path in files)
    for path in files:
        target = scratch / Path(path).relative_to("models")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, target)
    before = {path: (ROOT / path).read_bytes() for path in files}
    (rebuild,) = [command for command in make_models_commands() if command[0] == "rebuild"]

    def run() -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "app", *rebuild, "--models-dir", str(scratch)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert done.returncode == 0, done.stderr
        return done

    said = run().stderr
    assert (scratch / "topic" / "model.onnx").is_file(), "topic was not built"
    assert (scratch / "topic" / "parity.json").is_file()  # the figures went beside
    changed = [
        path for path in files if (scratch / Path(path).relative_to("models")).read_bytes()
        != before[path]
    ]  # fmt: skip
    assert not changed, f"rebuilding changed committed files: {changed}"
    noise = [text for text in EXPECTED_NOISE if text in said]
    assert not noise, f"expected library warnings printed: {noise}\n{said}"
    # Built now: the same command again is a no-op (--skip-existing).
    assert "'topic' is already built" in run().stdout


def test_a_model_built_before_parity_json_counts_as_unbuilt(tmp_path: Path) -> None:
    """Built once more by `make models`, which records its figures beside model.json."""
    built = tmp_path / "topic"
    built.mkdir()
    for name in ("model.json", PARITY_FILE):
        shutil.copy2(ROOT / "models" / "topic" / name, built / name)
    manifest = ModelManifest.read(built)
    for name in [*manifest.files.values(), manifest.tokenizer]:
        (built / name).touch()  # is_built asks only that they exist
    assert is_built(tmp_path, "topic")
    (built / PARITY_FILE).unlink()
    assert not is_built(tmp_path, "topic")
