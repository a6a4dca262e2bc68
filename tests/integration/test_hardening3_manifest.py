"""Issue #28, class 14: `model.json` values held to the graph and the directory at start.

Each bad manifest stops `encoder-serve serve` before it answers anything, with one line
naming the file and the field: a max length beyond the position table (caught by the
exported config, or without one by a pass of that many tokens), a label count the
classifier's outputs contradict, attention layers the graph lacks, a name that is not
its directory's, a file outside the directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MODELS_DIR, start_server


def repository(tmp_path: Path, model: str, changes: dict[str, Any], *, name: str = "") -> Path:
    """A repository of one default model (its files linked, not copied) whose manifest has
    `changes`; in a directory called `name` (default: the model's)."""
    repo = tmp_path / "repo"
    directory = repo / (name or model)
    directory.mkdir(parents=True)
    for source in (MODELS_DIR / model).iterdir():
        if source.name != "model.json":
            (directory / source.name).symlink_to(source)
    manifest = json.loads((MODELS_DIR / model / "model.json").read_text())
    manifest.update(changes)
    (directory / "model.json").write_text(json.dumps(manifest))
    return directory


def without_torch(model: str) -> dict[str, Any]:
    """The manifest's files without the PyTorch weights (and so without their config)."""
    files = json.loads((MODELS_DIR / model / "model.json").read_text())["files"]
    return {"files": {key: value for key, value in files.items() if key != "torch"}}


CASES = [
    pytest.param("minilm", {"max_length": 1024}, "max_length: 1024 is beyond", id="max-length"),
    pytest.param(
        "minilm",
        {"max_length": 1024, **without_torch("minilm")},
        "max_length: a pass of 1024 tokens failed",
        id="max-length-graph",
    ),
    pytest.param(
        "sentiment",
        {"labels": ["negative", "neutral", "positive"], **without_torch("sentiment")},
        "labels: 3 against 2 outputs of the graph",
        id="labels-graph",
    ),
    pytest.param(
        "minilm",
        {"num_layers": 12, **without_torch("minilm")},
        "num_layers: 12 layers of 12 heads against the attention graph's 6 of 12",
        id="layers-graph",
    ),
    pytest.param("minilm", {"name": "sentiment"}, "name: 'sentiment' is not its", id="name"),
    pytest.param(
        "minilm",
        {"tokenizer": "../sentiment/tokenizer.json"},
        "tokenizer: '../sentiment/tokenizer.json' is outside the model's directory",
        id="outside",
    ),
]


@pytest.mark.parametrize(("model", "changes", "expected"), CASES)
def test_a_bad_manifest_stops_start_up_naming_file_and_field(
    default_models: Path, tmp_path: Path, model: str, changes: dict[str, Any], expected: str
) -> None:
    directory = repository(tmp_path, model, changes)
    env = {"ENCODER_MODELS_DIR": str(directory.parent), "ENCODER_LOG_FORMAT": "text"}
    live = start_server(tmp_path, env, wait_ready=False)
    try:
        code = live.process.wait(120)
    finally:
        live.stop()  # a server that took the manifest is not left running
    log = live.log()
    assert code != 0, log
    assert "Traceback" not in log, log
    # The command's one line on stderr (the log has it too).
    (line,) = [line for line in log.splitlines() if line.startswith("encoder-serve: ")]
    assert expected in line and str(directory / "model.json") in line, line
