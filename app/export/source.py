"""Resolve an export SOURCE (a model directory or an installed package) and read its configs."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def resolve_source(source: str) -> Path:
    """A Hugging Face model directory: the path itself, or the one inside an installed package."""
    path = Path(source)
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        raise FileNotFoundError(f"{path} is a directory without config.json: not a model directory")
    spec = importlib.util.find_spec(source.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"'{source}' is neither a model directory nor an installed Python package"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    configs = sorted(package_dir.rglob("config.json"), key=lambda p: len(p.parts))
    for config in configs:
        if (config.parent / "tokenizer.json").is_file():
            return config.parent
    raise FileNotFoundError(f"package '{source}' ({package_dir}) holds no model directory")


@dataclass(frozen=True)
class SentenceTransformerConfig:
    """What a sentence-transformers model directory says about pooling and length.

    Its Normalize module is not read: the served vectors are normalized unless a request
    asks otherwise (`normalize`, default true, as in TEI), whatever the model says.
    """

    pooling: str | None  # "mean" / "cls", None when the directory has no pooling module
    max_length: int | None


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def read_sentence_transformer_config(directory: Path) -> SentenceTransformerConfig:
    modules: list[dict[str, Any]] = _read_json(directory / "modules.json") or []
    pooling: str | None = None
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            config: dict[str, Any] = (
                _read_json(directory / module.get("path", "") / "config.json") or {}
            )
            if config.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif config.get("pooling_mode_mean_tokens"):
                pooling = "mean"
            else:
                modes = [
                    key for key, value in config.items() if key.startswith("pooling_mode") and value
                ]
                raise ValueError(
                    f"unsupported sentence-transformers pooling {modes} in {directory}"
                )
    max_length = (_read_json(directory / "sentence_bert_config.json") or {}).get("max_seq_length")
    return SentenceTransformerConfig(pooling, max_length)
