"""The model registry: loads every model of the repository and resolves names and defaults."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from app.config import Settings
from app.engine.attention import AttentionEncoder
from app.engine.batcher import BatchLimits, BatchService, DynamicBatcher
from app.engine.encoder import Encoder
from app.engine.errors import ModelLoadError, ModelNotFound
from app.engine.heads import ClassifierHead
from app.engine.instances import instance_count, threads_per_instance
from app.engine.manifest import MANIFEST_FILE, ModelManifest, Task
from app.engine.model import ServedModel
from app.engine.model_checks import check_directory, checked_graphs
from app.engine.pipeline import Pipeline, open_pipeline, open_tokenizer, resolve_precision
from app.engine.runner import ModelRunner, attention_service, token_service
from app.engine.tokenization import TextTokenizer, TokenizedText
from app.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T", int, float)

# A model's batch service by name (the model's, `attention_service(model)` or
# `token_service(model)`): its runner's batchers in this process, or the engine
# process's (app/engine/remote.py).
BatchesOf = Callable[[str], BatchService[TokenizedText, np.ndarray]]

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


def load_runner(
    directory: Path, manifest: ModelManifest, settings: Settings, metrics: Metrics | None = None
) -> ModelRunner:
    """Open the sessions of one model directory; failures name the model and file."""
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
    attention = None
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
    runner = ModelRunner(
        manifest,
        pipelines,
        limits,
        precision=resolve_precision(manifest, settings.precision),
        attention=attention,
        metrics=metrics,
    )
    checked_graphs(directory, runner)  # the manifest against what the graphs answer
    return runner


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


class ModelRegistry:
    """The loaded models by name, and the default model of each task.

    In the process that runs the passes it also holds each base model's `ModelRunner`
    (sessions and batchers); a front-end worker's registry has none (`remote`).
    """

    def __init__(
        self,
        models: list[ServedModel],
        default_order: list[str],
        runners: dict[str, ModelRunner] | None = None,
    ) -> None:
        self._models = {model.name: model for model in models}
        self.runners = runners or {}
        # Defaults: the preferred names first, then the rest alphabetically.
        preferred = [name for name in default_order if name in self._models]
        self._order = preferred + sorted(set(self._models) - set(preferred))

    @classmethod
    def load(
        cls,
        settings: Settings,
        metrics: Metrics | None = None,
        tokenize_executor: Executor | None = None,
        *,
        remote: BatchesOf | None = None,
    ) -> ModelRegistry:
        """Load every selected model; a head model shares its base model's encoder.

        With `remote`, the passes run elsewhere: only tokenizers and heads are loaded here.
        Each manifest is read once, whether its model is served, a base, or both.
        """
        if settings.backend == "benchmark-fixed" and remote is None:
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
        runners: dict[str, ModelRunner] = {}

        def manifest_of(name: str) -> ModelManifest:
            if name not in manifests:
                manifests[name] = read_manifest(settings.models_dir / name)
            return manifests[name]

        def encoder_of(name: str) -> Encoder:
            if name in encoders:
                return encoders[name]
            directory = settings.models_dir / name
            if "/" in name or not (directory / MANIFEST_FILE).is_file():
                raise ModelLoadError(
                    f"base model '{name}' has no {MANIFEST_FILE} in {settings.models_dir}"
                )
            manifest = manifest_of(name)
            if remote is not None:
                encoders[name] = remote_encoder(
                    directory, manifest, settings, remote, tokenize_executor
                )
                return encoders[name]
            runner = runners[name] = load_runner(directory, manifest, settings, metrics)
            attention = runner.attention.tokenizer if runner.attention is not None else None
            encoders[name] = build_encoder(
                manifest,
                runner.pipeline.tokenizer,
                attention,
                runner.service,
                settings,
                tokenize_executor,
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
                runner = runners.get(model.encoder.name)
                if runner is not None:
                    backend = runner.pipeline.backend.name
                    info = metrics.model_info.labels(
                        model.name, model.task, backend, runner.precision
                    )
                    info.set(1)
        return cls(models, settings.default_models, runners)

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

    def runner_of(self, model: ServedModel) -> ModelRunner:
        """The runner of the model's base encoder (KeyError in a front-end worker)."""
        return self.runners[model.encoder.name]

    @property
    def batchers(self) -> list[DynamicBatcher[Any, Any]]:
        """Every batcher of every runner: the inference path and the attention path."""
        return [batcher for runner in self.runners.values() for batcher in runner.batchers]

    def warm_up(self) -> None:
        """One forward pass per graph, off the event loop, before the server reports ready."""
        for runner in self.runners.values():
            runner.warm_up(WARMUP_TEXT)
            log.info("model %s warmed up", runner.name)
