"""The engine interface served in this process: the registry's models, their batchers, threads."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from app.config import Settings, available_cores
from app.engine.attention import Aggregate, AttentionMap
from app.engine.classification import DEFAULT_HYPOTHESIS_TEMPLATE
from app.engine.explain import ExplainOptions, Explanation
from app.engine.interface import (
    Classification,
    ClassifyOptions,
    Embeddings,
    ModelDescription,
    TextInput,
    TokenEmbeddings,
    TokenIds,
    Tokenization,
)
from app.engine.manifest import Task
from app.engine.model import ServedModel
from app.engine.registry import ModelRegistry
from app.engine.runner import ModelRunner
from app.metrics import Metrics


def describe(
    model: ServedModel, runner: ModelRunner, tokenization_workers: int
) -> ModelDescription:
    manifest, backend = model.manifest, runner.pipeline.backend
    limits = runner.batcher.limits
    return ModelDescription(
        name=model.name,
        task=manifest.task,
        source=manifest.source,
        labels=list(manifest.labels),
        dimensions=manifest.dimensions,
        max_length=manifest.max_length,
        pooling=manifest.pooling,
        backend=backend.name,
        device=backend.device,
        precision=runner.precision,
        instances=runner.batcher.instances,
        max_batch_size=limits.max_batch_size,
        max_batch_tokens=limits.max_batch_tokens,
        max_queue=limits.max_queue,
        tokenization_workers=tokenization_workers,
        attention=runner.attention is not None,
    )


class RegistryEngine:
    """The requests of `app.engine.interface.Engine` over a `ModelRegistry`; subclasses
    say where the passes run (`InProcessEngine` here, `RemoteEngine` in the engine process)."""

    def __init__(
        self,
        registry: ModelRegistry,
        descriptions: dict[str, ModelDescription],
        tokenize_executor: ThreadPoolExecutor,
    ) -> None:
        self._registry = registry
        self._descriptions = descriptions  # never change once loaded: built once
        self._tokenize_executor = tokenize_executor

    @property
    def registry(self) -> ModelRegistry:
        """The loaded models themselves, for tools and tests in this process."""
        return self._registry

    def models(self) -> list[ModelDescription]:
        return [self._descriptions[model.name] for model in self._registry]

    def model(self, name: str | None, task: Task) -> ModelDescription:
        return self._descriptions[self._registry.get(name, task).name]

    async def embed(
        self,
        model: str,
        inputs: Sequence[str] | TokenIds,
        *,
        normalize: bool = True,
        truncate: bool = True,
        dimensions: int | None = None,
    ) -> Embeddings:
        served = self._registry.get(model, "embedding")
        return await served.embed(
            inputs, normalize=normalize, truncate=truncate, dimensions=dimensions
        )

    async def embed_tokens(
        self, model: str, inputs: Sequence[str], *, truncate: bool = True
    ) -> TokenEmbeddings:
        return await self._registry.get(model, "embedding").embed_tokens(inputs, truncate=truncate)

    async def classify(
        self, model: str, inputs: Sequence[TextInput], options: ClassifyOptions
    ) -> Classification:
        return await self._registry.get(model, "classification").classify(inputs, options)

    async def zero_shot(
        self,
        model: str,
        inputs: Sequence[str],
        labels: list[str],
        template: str,
        options: ClassifyOptions,
    ) -> Classification:
        served = self._registry.get(model, "embedding")
        return await served.zero_shot(inputs, labels, template, options)

    async def attention(
        self,
        model: str,
        text: str,
        *,
        layers: list[int] | None,
        heads: list[int] | None,
        how: Aggregate,
        truncate: bool,
    ) -> AttentionMap:
        served = self._registry.get(model, "embedding")
        return await served.attention(text, layers=layers, heads=heads, how=how, truncate=truncate)

    async def explain(
        self,
        model: str,
        text: str,
        options: ExplainOptions,
        labels: list[str] | None = None,
        template: str = DEFAULT_HYPOTHESIS_TEMPLATE,
    ) -> Explanation:
        served = self._registry.get(model, "classification" if labels is None else "embedding")
        return await served.explain(text, options, labels, template)

    async def tokenize(self, model: str, texts: Sequence[str]) -> Tokenization:
        return await self._registry.get(model, "embedding").tokenize(texts)

    async def decode(
        self, model: str, ids: list[list[int]], *, skip_special_tokens: bool = True
    ) -> list[str]:
        served = self._registry.get(model, "embedding")
        return await served.decode(ids, skip_special_tokens=skip_special_tokens)


class InProcessEngine(RegistryEngine):
    """Implements `app.engine.interface.Engine` with the sessions in this process."""

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics | None, *, warm_up: bool) -> InProcessEngine:
        workers = tokenization_threads()
        executor = ThreadPoolExecutor(workers, thread_name_prefix="tokenize")
        try:
            registry = ModelRegistry.load(settings, metrics, executor)
            if warm_up:
                registry.warm_up()
        except BaseException:
            executor.shutdown(wait=False)
            raise
        descriptions = {
            model.name: describe(model, registry.runner_of(model), workers) for model in registry
        }
        return cls(registry, descriptions, executor)

    async def start(self) -> None:
        for batcher in self._registry.batchers:
            batcher.start()

    def not_ready(self) -> str | None:
        stopped = [batcher.name for batcher in self._registry.batchers if not batcher.alive]
        return f"batch workers stopped for models: {', '.join(stopped)}" if stopped else None

    async def drain(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        batchers = self._registry.batchers
        # Until all are idle at once: a request of several passes (zero-shot: labels, then
        # texts) may queue again in a batcher already seen idle.
        while any(batcher.pending for batcher in batchers):
            for batcher in batchers:
                if not await batcher.drain(max(deadline - time.monotonic(), 0.0)):
                    return False
        return True

    async def close(self) -> None:
        for batcher in self._registry.batchers:
            await batcher.stop()
        self._tokenize_executor.shutdown(wait=False, cancel_futures=True)


def tokenization_threads() -> int:
    """Threads that tokenize large requests off the event loop: one per core."""
    return available_cores()
