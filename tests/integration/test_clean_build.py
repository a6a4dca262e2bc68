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


def test_make_models_leaves_committed_files_unchanged_and_quiet(tmp_path: Path) -> None:
    scratch = tmp_path / "models"
    files = committed_model_files()
    assert any(path.endswith("/delta/delta.json") for path in files)
    for path in files:
        target = scratch / Path(path).relative_to("models")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, target)
    before = {path: (ROOT / path).read_bytes() for path in files}

    said = ""
    for command in make_models_commands():
        done = subprocess.run(
            [sys.executable, "-m", "app", *command, "--models-dir", str(scratch)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert done.returncode == 0, done.stderr
        said += done.stderr

    for name in ("minilm", "sentiment", "topic"):
        assert (scratch / name / "model.onnx").is_file(), f"{name} was not built"
        assert (scratch / name / "parity.json").is_file()  # the figures went beside
    changed = [
        path for path in files if (scratch / Path(path).relative_to("models")).read_bytes()
        != before[path]
    ]  # fmt: skip
    assert not changed, f"rebuilding changed committed files: {changed}"
    noise = [text for text in EXPECTED_NOISE if text in said]
    assert not noise, f"expected library warnings printed: {noise}\n{said}"

    # Built now: `make models` again is a no-op (--skip-existing), and a directory built
    # before the figures moved to parity.json is built once more to record them there.
    (scratch / "topic" / "parity.json").unlink()
    for command in make_models_commands():
        done = subprocess.run(
            [sys.executable, "-m", "app", *command, "--models-dir", str(scratch)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert done.returncode == 0, done.stderr
        said = done.stdout
    assert "'sentiment' is already built" in said and "rebuilt 'topic'" in said, said
    assert (scratch / "topic" / "parity.json").is_file()
