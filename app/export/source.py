"""Resolve an export SOURCE (a model directory, an installed package or a Hub id) and read
its configs."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SourceError(ValueError):
    """An export source that cannot be found or fetched; the message says what to do."""


# What an export reads from a Hub repository: configs, tokenizer, weights (not other
# frameworks' copies of them, nor the repository's ONNX or OpenVINO exports).
HUB_FILES = ["*.json", "*.txt", "*.model", "*.safetensors", "1_Pooling/*", "pytorch_model.bin"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_source(source: str, revision: str | None = None) -> Path:
    """A Hugging Face model directory: the path itself, the one inside an installed
    package, or a Hub repository id (`org/name`) fetched into the Hugging Face cache.

    The Hub goes through `huggingface_hub`, so HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE and
    HF_TOKEN (or a saved login) work as with every Hugging Face tool.
    """
    path = Path(source)
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        raise SourceError(f"{path} is a directory without config.json: not a model directory")
    if revision is None and "/" not in source:
        found = _package_model(source)
        if found is not None:
            return found
    if not HUB_ID.match(source):
        raise SourceError(
            f"'{source}' is neither a model directory, nor an installed Python package, "
            "nor a Hugging Face Hub id (org/name)"
        )
    return _hub_model(source, revision)


@contextmanager
def loading(source: object) -> Iterator[None]:
    """What loading a source's config, tokenizer or weights raises, as one `SourceError`.

    transformers, safetensors and torch raise OSError, ValueError, RuntimeError, pickle or
    their own errors for a directory without weights, a truncated or foreign weights file
    or a broken config: all of them mean a bad source, which the tools report in one line.
    """
    try:
        yield
    except (SourceError, MemoryError, RecursionError):
        raise
    except Exception as error:  # see above: the source is bad, not the code
        message = " ".join(str(error).split()) or type(error).__name__
        raise SourceError(f"{source}: cannot load the model: {message}") from error


def _package_model(source: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(source.replace("-", "_"))
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    configs = sorted(package_dir.rglob("config.json"), key=lambda p: len(p.parts))
    for config in configs:
        if (config.parent / "tokenizer.json").is_file():
            return config.parent
    raise SourceError(f"package '{source}' ({package_dir}) holds no model directory")


def hub_snapshot(repo_id: str, revision: str | None, also: tuple[str, ...] = ()) -> Path:
    """A Hub repository's snapshot directory in the Hugging Face cache (fetched there
    unless offline): what an export reads, and the files matching `also`."""
    return _hub_model(repo_id, revision, also)


def _hub_model(repo_id: str, revision: str | None, also: tuple[str, ...] = ()) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f"'{repo_id}'" + (f" at revision '{revision}'" if revision else "")
    try:
        directory = Path(
            snapshot_download(repo_id, revision=revision, allow_patterns=[*HUB_FILES, *also])
        )
    except GatedRepoError:
        raise SourceError(
            f"{at} is gated on the Hugging Face Hub: accept its terms on its page, then "
            "log in (`hf auth login`) or set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise SourceError(
            f"{at} is not a model on the Hugging Face Hub (or it is private: log in with "
            "`hf auth login` or set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise SourceError(f"{at}: the Hub repository has no such revision") from None
    except LocalEntryNotFoundError:
        where = (
            "offline mode (HF_HUB_OFFLINE) is on"
            if constants.HF_HUB_OFFLINE
            else ("the Hugging Face Hub cannot be reached")
        )
        raise SourceError(
            f"{at} is neither a model directory nor an installed Python package, and as a "
            f"Hugging Face Hub id it is not in the cache ({constants.HF_HUB_CACHE}) while "
            f"{where}: download it where there is network (`hf download {repo_id}`) and "
            "copy that cache here, or pass a local model directory"
        ) from None
    if not (directory / "config.json").is_file():
        raise SourceError(f"{at} has no config.json: not a transformers model")
    return directory


@dataclass(frozen=True)
class SentenceTransformerConfig:
    """What a sentence-transformers model directory says about pooling and length.

    Its Normalize module is not read: the served vectors are normalized unless a request
    asks otherwise (`normalize`, default true, as in TEI), whatever the model says.
    """

    pooling: str | None  # "mean" / "cls", None when the directory has no pooling module
    max_length: int | None
    # config_sentence_transformers.json's prompts by name ({"query": "query: "}): what a
    # request's prompt_name may name (TEI reads the same file).
    prompts: dict[str, str] = field(default_factory=dict)


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
    return SentenceTransformerConfig(pooling, max_length, read_prompts(directory))


def read_prompts(directory: Path) -> dict[str, str]:
    """The prompts of `config_sentence_transformers.json` (none when it has none); a
    `prompts` that is not an object of strings is a ValueError naming the file."""
    path = directory / "config_sentence_transformers.json"
    prompts = (_read_json(path) or {}).get("prompts") or {}
    if not isinstance(prompts, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in prompts.items()
    ):
        raise ValueError(f"{path}: prompts must be an object of names to prompt texts")
    return dict(prompts)
