"""The engine served in this process: the registry's models over their sessions and
batchers here (one server process, or the engine process behind the workers)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from app.config import Settings
from app.engine.contract import ModelDescription
from app.engine.models.engine import RegistryEngine, tokenization_threads
from app.engine.models.served import ServedModel
from app.engine.passes.loading import LocalRegistry
from app.engine.passes.runner import ModelRunner
from app.metrics import Metrics


def describe(
    model: ServedModel, runner: ModelRunner, tokenization_workers: int, *, default: bool
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
        default=default,
        prompts=dict(manifest.prompts),
    )


class InProcessEngine(RegistryEngine[LocalRegistry]):
    """Implements `app.engine.contract.Engine` with the sessions in this process."""

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics | None, *, warm_up: bool) -> InProcessEngine:
        workers = tokenization_threads()
        executor = ThreadPoolExecutor(workers, thread_name_prefix="tokenize")
        try:
            registry = LocalRegistry.open(settings, metrics, executor)
            if warm_up:
                registry.warm_up()
        except BaseException:
            executor.shutdown(wait=False)
            raise
        descriptions = {
            model.name: describe(
                model, registry.runner_of(model), workers, default=registry.is_default(model)
            )
            for model in registry
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
