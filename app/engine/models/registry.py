"""The model registry: loads every model of the repository and resolves names and defaults.

How a base model's passes run is given to it (`EncoderOf`): over the engine process's
batchers in a front-end worker (`ModelRegistry.load` with `remote`), or over sessions in
this process (`app.engine.passes.loading.LocalRegistry`). Nothing here opens a session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import get_args

import numpy as np

from app.config import Settings
from app.engine.contract import Task
from app.engine.errors import ModelLoadError, ModelNotFound
from app.engine.manifest import MANIFEST_FILE, ModelManifest
from app.engine.model_checks import check_directory
from app.engine.models.attention import AttentionEncoder
from app.engine.models.batches import BatchService, attention_service, token_service
from app.engine.models.encoder import Encoder
from app.engine.models.heads import ClassifierHead
from app.engine.models.served import ServedModel
from app.engine.models.tokenization import TextTokenizer, TokenizedText, open_tokenizer
from app.metrics import Metrics

log = logging.getLogger(__name__)

# A model's batch service by name (the model's, `attention_service(model)` or
# `token_service(model)`): its runner's batchers in this process, or the engine
# process's (app/engine/transport/client.py).
BatchesOf = Callable[[str], BatchService[TokenizedText, np.ndarray]]
# A base model's request side, from its directory and manifest.
EncoderOf = Callable[[Path, ModelManifest], Encoder]


def discover(models_dir: Path, selected: list[str]) -> list[Path]:
    """Model directories to serve: all with a manifest, or the `selected` names only."""
    found = {
        path.parent.name: path.parent for path in sorted(models_dir.glob(f"*/{MANIFEST_FILE}"))
    }
    missing = [name for name in selected if name not in found]
    if missing:
        raise ModelLoadError(
            f"models {missing} were selected but have no {MANIFEST_FILE} under {models_dir}"
            f" (found: {sorted(found) or 'none'})"
        )
    return [found[name] for name in selected] if selected else list(found.values())


def build_encoder(
    manifest: ModelManifest,
    tokenizer: TextTokenizer,
    attention_tokenizer: TextTokenizer | None,
    batches_of: BatchesOf,
    settings: Settings,
    tokenize_executor: Executor | None = None,
) -> Encoder:
    """The request side of a model over its batch services (see `BatchesOf`)."""
    attention = None
    if attention_tokenizer is not None:
        attention = AttentionEncoder(
            manifest.name,
            attention_tokenizer,
            manifest.num_layers,
            manifest.num_heads,
            batches_of(attention_service(manifest.name)),
            settings.request_timeout_s,
            tokenize_executor,
        )
    tokens = batches_of(token_service(manifest.name)) if manifest.task == "embedding" else None
    return Encoder(
        manifest,
        tokenizer,
        batches_of(manifest.name),
        settings.request_timeout_s,
        tokenize_executor=tokenize_executor,
        attention=attention,
        token_batches=tokens,
    )


def remote_encoder(
    directory: Path,
    manifest: ModelManifest,
    settings: Settings,
    batches_of: BatchesOf,
    tokenize_executor: Executor | None = None,
) -> Encoder:
    """A model's request side whose passes run elsewhere: tokenizers only, no session."""
    attention_tokenizer = None
    if "attention" in manifest.files:
        length = min(settings.max_attention_tokens, manifest.max_length)
        attention_tokenizer = open_tokenizer(directory, manifest, length)
    tokenizer = open_tokenizer(directory, manifest, manifest.max_length)
    return build_encoder(
        manifest, tokenizer, attention_tokenizer, batches_of, settings, tokenize_executor
    )


def read_manifest(directory: Path) -> ModelManifest:
    """The manifest, checked against its directory (app/engine/model_checks.py)."""
    try:
        manifest = ModelManifest.read(directory)
        check_directory(directory, manifest)
    except Exception as error:
        raise ModelLoadError(f"model '{directory.name}': {error}") from error
    return manifest


def load_head(directory: Path, manifest: ModelManifest, base: Encoder) -> ClassifierHead:
    path = directory / str(manifest.head)
    try:
        head = ClassifierHead.load(path)
    except Exception as error:
        raise ModelLoadError(
            f"model '{manifest.name}': cannot load head {path}: {error}"
        ) from error
    expected = (base.manifest.dimensions, len(manifest.labels))
    if (head.input_size, head.output_size) != expected:
        raise ModelLoadError(
            f"model '{manifest.name}': head {path} maps {head.input_size} -> {head.output_size}, "
            f"but base '{base.name}' gives {expected[0]} dims and there are {expected[1]} labels"
        )
    return head


TASKS: tuple[Task, ...] = get_args(Task)
DEFAULT_SETTING = "set ENCODER_DEFAULT_MODELS (e.g. classification=NAME,embedding=NAME)"
DEFAULT_FIX = f'{DEFAULT_SETTING}, or mark one model "default": true in its model.json'


def choose_defaults(models: list[ServedModel], setting: list[str]) -> dict[Task, str]:
    """The default model of each task, never by name order. Per task, in precedence:
    ENCODER_DEFAULT_MODELS (an entry `task=name`, else its first bare name of that task);
    the one model marked `"default": true` in its model.json; the only model of the task.
    A task with several models and none chosen has no default (a request must name its
    model). A setting naming a model not served, or of another task, and several models of
    one task marked default, are start-up errors (ModelLoadError)."""
    by_name = {model.name: model for model in models}
    chosen: dict[Task, str] = {}
    bare: list[str] = []
    for entry in setting:
        task, equals, name = entry.rpartition("=")
        if name not in by_name:
            raise ModelLoadError(
                f"ENCODER_DEFAULT_MODELS names {name!r}, which is not served "
                f"(served: {', '.join(sorted(by_name)) or 'none'})"
            )
        if not equals:
            bare.append(name)
        elif by_name[name].manifest.task != task:
            raise ModelLoadError(
                f"ENCODER_DEFAULT_MODELS: {name!r} serves {by_name[name].manifest.task}, not {task}"
            )
        else:
            chosen.setdefault(by_name[name].manifest.task, name)
    for name in bare:
        chosen.setdefault(by_name[name].manifest.task, name)
    for task in TASKS:
        if task in chosen:
            continue
        of_task = sorted(name for name, model in by_name.items() if model.manifest.task == task)
        marked = [name for name in of_task if by_name[name].manifest.default]
        if len(marked) > 1:
            raise ModelLoadError(
                f"several {task} models are marked default in their model.json "
                f"({', '.join(marked)}): keep one marked, or {DEFAULT_SETTING}"
            )
        if marked or len(of_task) == 1:
            chosen[task] = (marked or of_task)[0]
    return chosen


class ModelRegistry:
    """The loaded models by name, and the default model of each task (`choose_defaults`)."""

    def __init__(self, models: list[ServedModel], default_models: list[str]) -> None:
        self._models = {model.name: model for model in models}
        self.defaults = choose_defaults(models, default_models)
        # The defaults first (embedding, then classification), then the rest by name.
        first = [self.defaults[task] for task in TASKS if task in self.defaults]
        self._order = first + sorted(set(self._models) - set(first))
        for task in TASKS:
            of_task = [name for name in self._order if self._models[name].task == task]
            if task not in self.defaults and of_task:
                log.warning(
                    "no default %s model among %s: requests without a model name for this "
                    "task are refused; %s",
                    task,
                    ", ".join(of_task),
                    DEFAULT_FIX,
                )

    @classmethod
    def load(
        cls,
        settings: Settings,
        metrics: Metrics | None = None,
        tokenize_executor: Executor | None = None,
        *,
        remote: BatchesOf,
    ) -> ModelRegistry:
        """A front-end worker's registry: the passes run elsewhere (`remote`), so only
        tokenizers and heads are loaded here."""

        def encoder_of(directory: Path, manifest: ModelManifest) -> Encoder:
            return remote_encoder(directory, manifest, settings, remote, tokenize_executor)

        return cls(served_models(settings, metrics, encoder_of), settings.default_models)

    def __iter__(self) -> Iterator[ServedModel]:
        return (self._models[name] for name in self._order)

    def is_default(self, model: ServedModel) -> bool:
        return self.defaults.get(model.manifest.task) == model.name

    def get(self, name: str | None, task: Task) -> ServedModel:
        """The named model (of any task), or the default model for `task` when no name is given."""
        if name is None:
            default = self.defaults.get(task)
            if default is not None:
                return self._models[default]
            of_task = [model.name for model in self if model.task == task]
            if not of_task:
                raise ModelNotFound(f"no loaded model serves the task '{task}'")
            raise ModelNotFound(
                f"several {task} models are served ({', '.join(of_task)}) and none is the "
                f"default: name one in the request's model field, or {DEFAULT_FIX}"
            )
        found = self._models.get(name)
        if found is None:
            raise ModelNotFound(f"model '{name}' is not loaded (loaded: {', '.join(self._order)})")
        return found


def served_models(
    settings: Settings, metrics: Metrics | None, encoder_of: EncoderOf
) -> list[ServedModel]:
    """Every selected model; a head model shares its base model's encoder. Each manifest
    is read once, whether its model is served, a base, or both."""
    directories = discover(settings.models_dir, settings.models)
    if not directories:
        raise ModelLoadError(
            f"no models under {settings.models_dir}: run `make models` to build the defaults"
        )
    manifests: dict[str, ModelManifest] = {}
    encoders: dict[str, Encoder] = {}

    def manifest_of(name: str) -> ModelManifest:
        if name not in manifests:
            manifests[name] = read_manifest(settings.models_dir / name)
        return manifests[name]

    def base_encoder(name: str) -> Encoder:
        if name in encoders:
            return encoders[name]
        directory = settings.models_dir / name
        if "/" in name or not (directory / MANIFEST_FILE).is_file():
            raise ModelLoadError(
                f"base model '{name}' has no {MANIFEST_FILE} in {settings.models_dir}"
            )
        encoders[name] = encoder_of(directory, manifest_of(name))
        return encoders[name]

    models = []
    cache = settings.label_cache_bytes
    for directory in directories:
        manifest = manifest_of(directory.name)
        if manifest.base is None:
            encoder = base_encoder(directory.name)
            models.append(ServedModel(manifest, encoder, None, metrics, label_cache_bytes=cache))
            continue
        base = base_encoder(manifest.base)
        head = load_head(directory, manifest, base) if manifest.head else None
        models.append(ServedModel(manifest, base, head, metrics, label_cache_bytes=cache))
    return models
