"""Opening a model's sessions for the process that runs its passes: its runner (sessions
behind batchers, checked against the manifest), and the registry of every model over them.

The engine process (or the only process, with one worker) loads this; a front-end worker
never does (its registry: `app.engine.models.registry.ModelRegistry.load` with `remote`).
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeVar

from app.config import Settings
from app.engine.batching.batcher import BatchLimits, DynamicBatcher
from app.engine.batching.instances import instance_count, threads_per_instance
from app.engine.batching.result_cache import ResultCache
from app.engine.errors import ModelLoadError
from app.engine.manifest import LOGIT_TASKS, ManifestError, ModelManifest
from app.engine.model_checks import LONG_TEXT, refuse
from app.engine.models.encoder import Encoder
from app.engine.models.registry import ModelRegistry, build_encoder, served_models
from app.engine.models.served import ServedModel
from app.engine.passes.busy import BusyClock
from app.engine.passes.pipeline import Pipeline, open_pipeline, resolve_precision
from app.engine.passes.runner import ModelRunner
from app.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T", int, float)

WARMUP_TEXT = "Warm-up: the first forward pass allocates what later ones reuse."


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
    directory: Path,
    manifest: ModelManifest,
    settings: Settings,
    metrics: Metrics | None = None,
    cache: ResultCache | None = None,
) -> ModelRunner:
    """Open the sessions of one model directory; failures name the model and file."""
    limits = batch_limits(settings, manifest)

    def observe(inputs: int, padded_tokens: int) -> None:
        if metrics is not None:
            metrics.batch_size.labels(manifest.name).observe(inputs)
            metrics.batch_tokens.labels(manifest.name).observe(padded_tokens)

    # The device duty cycle: the union of the model's passes in time, all instances together.
    busy = None
    if metrics is not None:
        busy_seconds = metrics.device_busy.labels(manifest.name)
        busy = BusyClock(busy_seconds.inc)
    sim_us = (settings.sim_pass_us, settings.sim_token_us)

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
            busy=busy,
            sim_us=sim_us,
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
            busy=busy,
            sim_us=sim_us,
        )
    runner = ModelRunner(
        manifest,
        pipelines,
        limits,
        precision=resolve_precision(manifest, settings.precision),
        attention=attention,
        metrics=metrics,
        cache=cache,
    )
    checked_graphs(directory, runner)  # the manifest against what the graphs answer
    return runner


def check_graphs(directory: Path, runner: ModelRunner) -> None:
    """One pass of `max_length` tokens per graph; its outputs' widths against the manifest."""
    manifest = runner.manifest
    if manifest.task in LOGIT_TASKS:
        field, width = "labels", len(manifest.labels)
    else:
        field, width = "dimensions", manifest.dimensions
    for pipeline in runner.pipelines:
        items = pipeline.tokenize([LONG_TEXT])
        try:
            (vector,) = pipeline.forward_unobserved(items)
        except Exception as error:
            why = " ".join(str(error).split())[:300]  # one line, however the backend words it
            raise refuse(
                directory,
                "max_length",
                f"a pass of {items[0].tokens} tokens failed ({why}); is it beyond the "
                "graph's position table?",
            ) from error
        if vector.shape[-1] != width:
            raise refuse(
                directory, field, f"{width} against {vector.shape[-1]} outputs of the graph"
            )
    if runner.attention is not None:
        attention = runner.attention
        with attention.unobserved():
            (maps,) = attention.attention_maps(attention.tokenize([LONG_TEXT]))
        shape = (manifest.num_layers, manifest.num_heads)
        if tuple(maps.shape[:2]) != shape:
            raise refuse(
                directory,
                "num_layers" if maps.shape[0] != shape[0] else "num_heads",
                f"{shape[0]} layers of {shape[1]} heads against the attention graph's "
                f"{maps.shape[0]} of {maps.shape[1]}",
            )


def checked_graphs(directory: Path, runner: ModelRunner) -> None:
    """`check_graphs`, failing as a model load error naming the model."""
    try:
        check_graphs(directory, runner)
    except ManifestError as error:
        raise ModelLoadError(f"model '{runner.manifest.name}': {error}") from error


def result_cache(settings: Settings, metrics: Metrics | None) -> ResultCache | None:
    """The process's result cache, shared by every model (None when ENCODER_CACHE_BYTES=0)."""
    if settings.cache_bytes == 0:
        return None
    on_size = metrics.cache_bytes.set if metrics is not None else (lambda _: None)
    return ResultCache(settings.cache_bytes, on_size)


class LocalRegistry(ModelRegistry):
    """The registry of the process that runs the passes: every model, and each base
    model's `ModelRunner` (sessions and batchers)."""

    def __init__(
        self,
        models: list[ServedModel],
        default_order: list[str],
        runners: dict[str, ModelRunner],
    ) -> None:
        super().__init__(models, default_order)
        self.runners = runners

    @classmethod
    def open(
        cls,
        settings: Settings,
        metrics: Metrics | None = None,
        tokenize_executor: Executor | None = None,
    ) -> LocalRegistry:
        """Load every selected model with its sessions in this process."""
        if settings.backend == "benchmark-fixed":
            log.warning(
                "ENCODER_BACKEND=benchmark-fixed: no model runs and every answer is the same "
                "vector; for measuring the server around the engine only"
            )
        elif settings.backend == "benchmark-sim":
            log.warning(
                "ENCODER_BACKEND=benchmark-sim: no model runs and every answer is the same "
                "vector; each pass waits %g us + %g us per padded token (a simulated "
                "accelerator, ENCODER_SIM_PASS_US / ENCODER_SIM_TOKEN_US); for benchmarks only",
                settings.sim_pass_us,
                settings.sim_token_us,
            )
        runners: dict[str, ModelRunner] = {}
        cache = result_cache(settings, metrics)

        def encoder_of(directory: Path, manifest: ModelManifest) -> Encoder:
            runner = runners[manifest.name] = load_runner(
                directory, manifest, settings, metrics, cache
            )
            attention = runner.attention.tokenizer if runner.attention is not None else None
            return build_encoder(
                manifest,
                runner.pipeline.tokenizer,
                attention,
                runner.service,
                settings,
                tokenize_executor,
            )

        models = served_models(settings, metrics, encoder_of)
        if metrics is not None:
            for model in models:
                runner = runners[model.encoder.name]
                backend = runner.pipeline.backend.name
                info = metrics.model_info.labels(model.name, model.task, backend, runner.precision)
                info.set(1)
        return cls(models, settings.default_models, runners)

    def runner_of(self, model: ServedModel) -> ModelRunner:
        """The runner of the model's base encoder."""
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
