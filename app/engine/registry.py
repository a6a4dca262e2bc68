"""The model registry: loads every model of the repository and resolves names and defaults."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from app.backends.onnx import OnnxBackend
from app.config import Settings
from app.engine.batcher import BatchLimits
from app.engine.errors import InvalidInput, ModelLoadError, ModelNotFound
from app.engine.manifest import MANIFEST_FILE, ModelManifest, Task
from app.engine.model import EncoderModel
from app.engine.tokenization import TextTokenizer
from app.metrics import Metrics

log = logging.getLogger(__name__)

WARMUP_TEXT = "Warm-up: the first forward pass allocates what later ones reuse."


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


def batch_limits(settings: Settings, manifest: ModelManifest) -> BatchLimits:
    """The server's batch limits, with the manifest's per-model overrides applied."""
    overrides = manifest.batching
    return BatchLimits(
        max_batch_size=int(overrides.get("max_batch_size", settings.max_batch_size)),
        max_batch_tokens=int(overrides.get("max_batch_tokens", settings.max_batch_tokens)),
        max_wait_s=float(overrides.get("max_wait_ms", settings.max_wait_ms)) / 1000,
        max_queue=int(overrides.get("max_queue", settings.max_queue)),
    )


def load_model(directory: Path, settings: Settings, metrics: Metrics | None) -> EncoderModel:
    """Load one model directory; any failure names the model and the file."""
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest = ModelManifest.read(directory)
    except Exception as error:
        raise ModelLoadError(
            f"model '{directory.name}': cannot read {manifest_path}: {error}"
        ) from error
    precision = "fp32"
    graph = directory / manifest.files.get(precision, "")
    tokenizer_path = directory / manifest.tokenizer
    for required in (graph, tokenizer_path):
        if not required.is_file():
            raise ModelLoadError(
                f"model '{manifest.name}': {required} is missing; run `make models` "
                "(or `encoder-serve export`) to build it"
            )
    try:
        tokenizer = TextTokenizer(tokenizer_path, manifest.max_length)
    except Exception as error:
        raise ModelLoadError(
            f"model '{manifest.name}': bad tokenizer {tokenizer_path}: {error}"
        ) from error
    try:
        backend = OnnxBackend(graph, threads=settings.intra_op_threads, device=settings.device)
    except Exception as error:
        raise ModelLoadError(f"model '{manifest.name}': cannot load {graph}: {error}") from error
    if metrics is not None:
        metrics.model_info.labels(manifest.name, manifest.task, backend.name, precision).set(1)
    return EncoderModel(
        manifest,
        tokenizer,
        backend,
        batch_limits(settings, manifest),
        settings.request_timeout_s,
        metrics,
    )


class ModelRegistry:
    """The loaded models by name, and the default model of each task."""

    def __init__(self, models: list[EncoderModel], default_order: list[str]) -> None:
        self._models = {model.name: model for model in models}
        # Defaults: the preferred names first, then the rest alphabetically.
        preferred = [name for name in default_order if name in self._models]
        self._order = preferred + sorted(set(self._models) - set(preferred))

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics | None = None) -> ModelRegistry:
        directories = discover(settings.models_dir, settings.models)
        if not directories:
            raise ModelLoadError(
                f"no models under {settings.models_dir}: run `make models` to build the defaults"
            )
        models = [load_model(directory, settings, metrics) for directory in directories]
        return cls(models, settings.default_models)

    def __iter__(self) -> Iterator[EncoderModel]:
        return (self._models[name] for name in self._order)

    def get(self, name: str | None, task: Task) -> EncoderModel:
        """The named model, or the default model for `task` when no name is given."""
        if name is None:
            for candidate in self:
                if candidate.manifest.task == task:
                    return candidate
            raise ModelNotFound(f"no loaded model serves the task '{task}'")
        found = self._models.get(name)
        if found is None:
            raise ModelNotFound(f"model '{name}' is not loaded (loaded: {', '.join(self._order)})")
        if found.manifest.task != task:
            raise InvalidInput(
                f"model '{name}' is a {found.manifest.task} model and does not serve {task}"
            )
        return found

    def warm_up(self) -> None:
        """One forward pass per model, off the event loop, before the server reports ready."""
        for model in self:
            items = model.tokenizer.encode([WARMUP_TEXT])
            model.forward(items)
            log.info("model %s warmed up", model.name)
