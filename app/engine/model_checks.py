"""A manifest's values checked against its model's directory and graphs, at load time.

`ModelManifest.read` checks the format alone; here, what it claims is held to what the
directory holds: its name is its directory's (so two directories never claim one name),
and where the exported PyTorch config is kept (`files.torch`), the max length fits the
position table and the layers, heads, width and labels are the config's. Then, once the
sessions are open, one pass of `max_length` tokens per graph (`check_graphs` in
app/engine/passes/loading.py, with the sessions) proves the position table
covers it, and its outputs must be as wide as the manifest says (labels, dimensions,
layers and heads of the attention maps). Each refusal is one line naming the file and
the field; the server does not start (a wrong value would be a 500 on long inputs, or
answers silently scored against the wrong labels).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.engine.manifest import LOGIT_TASKS, MANIFEST_FILE, ManifestError, ModelManifest

CONFIG_FILE = "config.json"
# RoBERTa-style position ids start after the padding index: the table holds that many more.
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert"}
# A text long enough to fill any max length: the check's pass is truncated to it.
LONG_TEXT = "the position table must cover every token " * 2048


def refuse(directory: Path, field: str, why: str) -> ManifestError:
    return ManifestError(f"{directory / MANIFEST_FILE}: {field}: {why}")


def check_directory(directory: Path, manifest: ModelManifest) -> None:
    """The manifest's name against its directory, its values against the exported config."""
    if manifest.name != directory.name:
        raise refuse(
            directory,
            "name",
            f"'{manifest.name}' is not its directory's name '{directory.name}' (a model is "
            "served under its directory's name; two directories cannot claim one name)",
        )
    config = exported_config(directory, manifest)
    if config is not None:
        check_config(directory, manifest, config)


def exported_config(directory: Path, manifest: ModelManifest) -> dict[str, Any] | None:
    """The `transformers` config kept with the PyTorch weights; None without one."""
    weights = manifest.files.get("torch")
    if weights is None or not (directory / weights / CONFIG_FILE).is_file():
        return None
    try:
        config = json.loads((directory / weights / CONFIG_FILE).read_text())
    except (OSError, ValueError) as error:
        raise refuse(directory, "files.torch", f"unreadable {CONFIG_FILE}: {error}") from error
    return config if isinstance(config, dict) else None


def check_config(directory: Path, manifest: ModelManifest, config: dict[str, Any]) -> None:
    source = f"{manifest.files['torch']}/{CONFIG_FILE}"
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int):
        if config.get("model_type") in OFFSET_POSITIONS:
            positions -= int(config.get("pad_token_id") or 0) + 1
        if manifest.max_length > positions:
            raise refuse(
                directory,
                "max_length",
                f"{manifest.max_length} is beyond the model's position table of {positions} "
                f"tokens ({source} max_position_embeddings)",
            )
    pairs = [
        ("num_layers", manifest.num_layers, "num_hidden_layers"),
        ("num_heads", manifest.num_heads, "num_attention_heads"),
        ("dimensions", manifest.dimensions, "hidden_size"),
    ]
    if manifest.task in LOGIT_TASKS and manifest.base is None and "id2label" in config:
        pairs.append(("labels", len(manifest.labels), "id2label"))
    for field, claimed, key in pairs:
        actual = config.get(key)
        actual = len(actual) if isinstance(actual, dict) else actual
        if isinstance(actual, int) and actual != claimed:
            what = "label(s)" if field == "labels" else ""
            raise refuse(
                directory,
                field,
                f"{claimed}{' ' + what if what else ''} against {actual} in {source} ({key})",
            )
