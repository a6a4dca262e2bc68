"""The model registry: loads every model of the repository and resolves names and defaults."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeVar

from app.config import Settings
from app.engine.attention import AttentionEncoder
from app.engine.batcher import BatchLimits, DynamicBatcher
from app.engine.encoder import Encoder
from app.engine.errors import ModelLoadError, ModelNotFound
from app.engine.heads import ClassifierHead
from app.engine.instances import instance_count, threads_per_instance
from app.engine.manifest import MANIFEST_FILE, ModelManifest, Task
from app.engine.model import ServedModel
from app.engine.pipeline import Pipeline, open_pipeline, resolve_precision
from app.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T", int, float)

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

    def pick(override: T | None, default: T) -> T:
        return default if override is None else override

    return BatchLimits(
        max_batch_size=pick(overrides.max_batch_size, settings.max_batch_size),
        max_batch_tokens=pick(overrides.max_batch_tokens, settings.max_batch_tokens),
        max_wait_s=pick(overrides.max_wait_ms, settings.max_wait_ms) / 1000,
        max_queue=pick(overrides.max_queue, settings.max_queue),
        max_queue_tokens=pick(overrides.max_queue_tokens, settings.max_queue_tokens),
    )


def load_encoder(
    directory: Path,
    manifest: ModelManifest,
    settings: Settings,
    metrics: Metrics | None = None,
    tokenize_executor: Executor | None = None,
) -> Encoder:
    """Open the pipelines of one model directory; failures name the model and file."""
    limits = batch_limits(settings, manifest)

    def observe(inputs: int, padded_tokens: int) -> None:
        if metrics is not None:
            metrics.batch_size.labels(manifest.name).observe(inputs)
            metrics.batch_tokens.labels(manifest.name).observe(padded_tokens)

    # The count for a CPU first; a model that lands on a GPU keeps one instance.
    cpu_instances = instance_count(settings.instances, manifest.batching.instances, "cpu")

    def open_instance() -> Pipeline:
        return open_pipeline(
            directory,
            manifest,
            settings.precision,
            engine=settings.backend,
            threads=threads_per_instance(settings.intra_op_threads, cpu_instances),
            device=settings.device,
            pack=settings.packing,
            rows_per_pass=settings.forward_batch_size,
            unsplit_rows=limits.max_batch_size,
            observe=observe,
        )

    first = open_instance()
    count = instance_count(settings.instances, manifest.batching.instances, first.backend.device)
    pipelines = [first, *(open_instance() for _ in range(count - 1))]
    log.info(
        "model %s: %d instance(s) of %d thread(s) on %s",
        manifest.name,
        count,
        threads_per_instance(settings.intra_op_threads, cpu_instances),
        first.backend.device,
    )
    encoder = Encoder(
        manifest,
        pipelines,
        limits,
        settings.request_timeout_s,
        precision=resolve_precision(manifest, settings.precision),
        tokenize_executor=tokenize_executor,
        metrics=metrics,
    )
    if "attention" in manifest.files:
        attention = open_pipeline(
            directory,
            manifest,
            "attention",
            engine=settings.backend,
            threads=settings.intra_op_threads,
            device=settings.device,
            max_length=settings.max_attention_tokens,
        )
        encoder.attention = AttentionEncoder(
            manifest.name,
            attention,
            manifest.num_layers,
            manifest.num_heads,
            settings.request_timeout_s,
            tokenize_executor,
            encoder.gate,
        )
    return encoder


def read_manifest(directory: Path) -> ModelManifest:
    try:
        return ModelManifest.read(directory)
    except Exception as error:
        raise ModelLoadError(f"model '{directory.name}': {error}") from error


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


class ModelRegistry:
    """The loaded models by name, and the default model of each task."""

    def __init__(self, models: list[ServedModel], default_order: list[str]) -> None:
        self._models = {model.name: model for model in models}
        # Defaults: the preferred names first, then the rest alphabetically.
        preferred = [name for name in default_order if name in self._models]
        self._order = preferred + sorted(set(self._models) - set(preferred))

    @classmethod
    def load(
        cls,
        settings: Settings,
        metrics: Metrics | None = None,
        tokenize_executor: Executor | None = None,
    ) -> ModelRegistry:
        """Load every selected model; a head model shares its base model's encoder.

        Each manifest is read once, whether its model is served, a base, or both.
        """
        if settings.backend == "benchmark-fixed":
            log.warning(
                "ENCODER_BACKEND=benchmark-fixed: no model runs and every answer is the same "
                "vector; for measuring the server around the engine only"
            )
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

        def encoder_of(name: str) -> Encoder:
            if name not in encoders:
                directory = settings.models_dir / name
                if "/" in name or not (directory / MANIFEST_FILE).is_file():
                    raise ModelLoadError(
                        f"base model '{name}' has no {MANIFEST_FILE} in {settings.models_dir}"
                    )
                encoders[name] = load_encoder(
                    directory, manifest_of(name), settings, metrics, tokenize_executor
                )
            return encoders[name]

        models = []
        for directory in directories:
            manifest = manifest_of(directory.name)
            cache = settings.label_cache_bytes
            if manifest.base is None:
                encoder = encoder_of(directory.name)
                models.append(
                    ServedModel(manifest, encoder, None, metrics, label_cache_bytes=cache)
                )
                continue
            base = encoder_of(manifest.base)
            head = load_head(directory, manifest, base) if manifest.head else None
            models.append(ServedModel(manifest, base, head, metrics, label_cache_bytes=cache))
        if metrics is not None:
            for model in models:
                encoder = model.encoder
                backend = encoder.pipeline.backend.name
                metrics.model_info.labels(model.name, model.task, backend, encoder.precision).set(1)
        return cls(models, settings.default_models)

    def __iter__(self) -> Iterator[ServedModel]:
        return (self._models[name] for name in self._order)

    def get(self, name: str | None, task: Task) -> ServedModel:
        """The named model (of any task), or the default model for `task` when no name is given."""
        if name is None:
            for candidate in self:
                if candidate.task == task:
                    return candidate
            raise ModelNotFound(f"no loaded model serves the task '{task}'")
        found = self._models.get(name)
        if found is None:
            raise ModelNotFound(f"model '{name}' is not loaded (loaded: {', '.join(self._order)})")
        return found

    @property
    def batchers(self) -> list[DynamicBatcher[Any, Any]]:
        """Every batcher of every encoder: the inference path and the attention path."""
        found: list[DynamicBatcher[Any, Any]] = []
        for encoder in self.encoders:
            found.append(encoder.batcher)
            if encoder.attention is not None:
                found.append(encoder.attention.batcher)
        return found

    @property
    def encoders(self) -> list[Encoder]:
        """Each encoder once, though several models may share it."""
        unique = {id(model.encoder): model.encoder for model in self}
        return list(unique.values())

    def warm_up(self) -> None:
        """One forward pass per graph, off the event loop, before the server reports ready."""
        for encoder in self.encoders:
            encoder.warm_up(WARMUP_TEXT)
            log.info("model %s warmed up", encoder.name)
