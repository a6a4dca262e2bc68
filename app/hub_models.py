"""`serve --model-id ORG/NAME`: each Hub model prepared once in the model cache, then served.

A model's snapshot comes through the Hugging Face cache, as for `export` (huggingface_hub:
HF_HOME, HF_HUB_OFFLINE, HF_TOKEN). A repository that ships its own ONNX export
(`onnx/model.onnx`, as many sentence-transformers repositories do) is served as it is,
checked against its PyTorch weights where torch is installed; any other is exported once
by `encoder-serve export` (the `export` extra). Whatever runs torch runs in a child
process: the serving process never imports it. `hub.json` in a prepared model's directory
records what it was prepared from (id, revision, the snapshot's commit, pooling); a later
start that asks for the same reuses it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.config import Settings, split_model_id
from app.engine.manifest import MANIFEST_FILE, ManifestError, ModelManifest

STAMP_FILE = "hub.json"
REPOSITORY_GRAPH = "onnx/model.onnx"
# The graph, and its weights when they are kept beside it (graphs over 2 GB).
REPOSITORY_ONNX = (REPOSITORY_GRAPH, "onnx/model.onnx_data")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
GRAPH_FILE = "model.onnx"
MAX_NAME = 64  # app.engine.manifest.MODEL_NAME


class HubModelError(Exception):
    """A Hub model that cannot be served; the message says why and what to do."""


def cache_name(repo_id: str, revision: str | None) -> str:
    """The model's name (and directory) in the cache: `org--name[--revision]`, valid as a
    model name; a long one is cut and told apart by a hash of the whole."""
    name = repo_id.replace("/", "--")
    if revision:
        name += "--" + re.sub(r"[^A-Za-z0-9._-]", "-", revision)
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 9]}-{digest}"
    return name


def export_extra_installed() -> bool:
    return all(importlib.util.find_spec(package) for package in ("torch", "transformers"))


def prepare_hub_models(settings: Settings, say: Callable[[str], None]) -> Settings:
    """The settings that serve the `model_id` models, each prepared (or found prepared) in
    `model_cache_dir`, which becomes the model repository."""
    names = [prepare(model_id, settings, say) for model_id in settings.model_id]
    return settings.model_copy(
        update={"models_dir": settings.model_cache_dir, "models": list(dict.fromkeys(names))}
    )


def prepare(model_id: str, settings: Settings, say: Callable[[str], None]) -> str:
    """Prepare one Hub model in the cache (or find it prepared); its served name."""
    from app.export.source import hub_snapshot

    repo_id, revision = split_model_id(model_id, settings.revision)
    name = cache_name(repo_id, revision)
    cache: Path = settings.model_cache_dir
    try:
        snapshot = hub_snapshot(repo_id, revision, also=REPOSITORY_ONNX)
    except ValueError as error:  # SourceError: not in the cache, gated, no such revision
        raise HubModelError(str(error)) from None
    stamp = {
        "model_id": repo_id,
        "revision": revision,
        "commit": snapshot.name,  # snapshots/<commit>
        "pooling": settings.pooling,
    }
    target = cache / name
    if _prepared(target, stamp):
        say(f"{model_id}: reusing {target} (prepared from commit {snapshot.name[:12]})")
        return name
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise HubModelError(f"cannot create the model cache {cache}: {error}") from None
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=cache) as scratch:
        if (snapshot / REPOSITORY_GRAPH).is_file():
            say(f"{model_id}: serving the repository's own ONNX export ({REPOSITORY_GRAPH})")
            work = Path(scratch) / name
            work.mkdir()
            how = _from_repository_graph(
                snapshot, work, name, f"{repo_id}@{snapshot.name}", settings
            )
        elif export_extra_installed():
            say(f"{model_id}: no ONNX export in the repository; exporting it once into {target}")
            work = _exported(repo_id, snapshot.name, name, Path(scratch))
            how = "exported by encoder-serve export"
        else:
            raise HubModelError(
                f"'{repo_id}' ships no ONNX export ({REPOSITORY_GRAPH}), and exporting it "
                "needs the export extra: pip install 'encoder-serve[export]'"
            )
        if settings.pooling is not None:
            manifest = ModelManifest.read(work)
            manifest.pooling = settings.pooling
            manifest.write(work)
        (work / STAMP_FILE).write_text(json.dumps({**stamp, "prepared": how}, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    say(f"{model_id}: prepared in {target}")
    return name


def _prepared(target: Path, stamp: dict[str, Any]) -> bool:
    """`target` holds a model prepared from the same snapshot, pooling included, whole."""
    try:
        found = json.loads((target / STAMP_FILE).read_text())
        manifest = ModelManifest.read(target)
    except (OSError, ValueError, ManifestError):
        return False
    if not isinstance(found, dict) or {k: found.get(k) for k in stamp} != stamp:
        return False
    return all((target / file).exists() for file in [*manifest.files.values(), manifest.tokenizer])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _first(config: dict[str, Any], *keys: str) -> int:
    """The first of `keys` the config has (BERT's names, then DistilBERT's)."""
    for key in keys:
        if isinstance(config.get(key), int):
            return int(config[key])
    raise HubModelError(f"the model's config.json has none of {', '.join(keys)}")


def _from_repository_graph(
    snapshot: Path, work: Path, name: str, source: str, settings: Settings
) -> str:
    """A model directory around the repository's own graph; how it was prepared."""
    from app.export.source import read_sentence_transformer_config

    if not (snapshot / "tokenizer.json").is_file():
        raise HubModelError(
            f"{snapshot} has an ONNX export but no tokenizer.json (a fast tokenizer): "
            "export it instead (encoder-serve export, the export extra)"
        )
    for file in TOKENIZER_FILES:
        if (snapshot / file).is_file():
            shutil.copyfile(snapshot / file, work / file)
    graph = snapshot / REPOSITORY_GRAPH
    _check_graph(graph)
    shutil.copyfile(graph, work / GRAPH_FILE)
    if (snapshot / REPOSITORY_ONNX[1]).is_file():  # the graph names it by this file name
        shutil.copyfile(snapshot / REPOSITORY_ONNX[1], work / Path(REPOSITORY_ONNX[1]).name)
    config = _read_json(snapshot / "config.json")
    try:
        st_config = read_sentence_transformer_config(snapshot)
    except ValueError as error:  # a pooling this server does not have
        if settings.pooling is None:
            raise HubModelError(f"{error}; choose one with --pooling mean or cls") from None
        st_config = None
    pooling = settings.pooling or (st_config.pooling if st_config else None) or "mean"
    declared = _read_json(snapshot / "tokenizer_config.json").get("model_max_length")
    positions = _first(config, "max_position_embeddings")
    if config.get("model_type") in {"roberta", "xlm-roberta", "camembert"}:
        positions -= 2  # positions start after the padding index
    length = (st_config.max_length if st_config else None) or min(
        int(declared) if isinstance(declared, int | float) else positions, positions
    )
    manifest = ModelManifest(
        name=name,
        task="embedding",
        source=source,
        pooling=pooling,
        max_length=length,
        dimensions=_first(config, "hidden_size", "dim"),
        num_layers=_first(config, "num_hidden_layers", "n_layers"),
        num_heads=_first(config, "num_attention_heads", "n_heads"),
        files={"fp32": GRAPH_FILE},
        parity={"fp32": _repository_parity(snapshot, work, length, pooling)},
    )
    manifest.write(work)
    return f"the repository's {REPOSITORY_GRAPH}"


def _check_graph(graph: Path) -> None:
    """The graph returns token states under the name the engine reads."""
    import onnx

    try:
        model = onnx.load(str(graph), load_external_data=False)
    except Exception as error:  # onnx raises its own DecodeError for a broken file
        raise HubModelError(f"{graph}: not a readable ONNX graph: {error}") from None
    outputs = [output.name for output in model.graph.output]
    if "last_hidden_state" not in outputs:
        raise HubModelError(
            f"{graph} returns {', '.join(outputs)}, not last_hidden_state (token states): "
            "export the model instead (encoder-serve export, the export extra)"
        )


def _repository_parity(snapshot: Path, work: Path, length: int, pooling: str) -> dict[str, Any]:
    """The graph against the repository's PyTorch weights, in a child process (torch stays
    out of this one); recorded as skipped without torch."""
    if not export_extra_installed():
        return {"skipped": "torch is not installed: not compared with the PyTorch weights"}
    command = [
        sys.executable, "-m", "app.export.repository_parity",
        str(snapshot), str(work / GRAPH_FILE), str(work / "tokenizer.json"), str(length), pooling,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode == 2:  # no readable PyTorch weights: only the graph is shipped
        why = " ".join(done.stderr.split())[-300:]
        return {"skipped": f"the repository's PyTorch weights cannot be loaded: {why}"}
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise HubModelError(f"{snapshot.parent.parent.name}: {lines[-1]}; not served")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return {**report, "compared": "last_hidden_state", "graph": REPOSITORY_GRAPH}


def _exported(repo_id: str, commit: str, name: str, scratch: Path) -> Path:
    """`encoder-serve export` in a child process (its progress on stderr); the directory."""
    command = [
        sys.executable, "-m", "app", "export", repo_id, "--revision", commit,
        "--name", name, "--models-dir", str(scratch),
    ]  # fmt: skip
    done = subprocess.run(command, stdout=sys.stderr, check=False)
    if done.returncode != 0:
        raise HubModelError(
            f"exporting '{repo_id}' failed (exit status {done.returncode}): see the line above"
        )
    if not (scratch / name / MANIFEST_FILE).is_file():
        raise HubModelError(f"exporting '{repo_id}' wrote no {MANIFEST_FILE}")
    return scratch / name
