"""The engine side of one model: its sessions (instances) behind a dynamic batcher, and its
attention graph behind a second one. This is what the engine process owns; requests reach
it as token ids through `Encoder` (app/engine/models/encoder.py), in this process or another.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.engine.batching.batcher import BatchLimits, DynamicBatcher
from app.engine.batching.core import Stages
from app.engine.batching.pass_gate import PassGate
from app.engine.batching.result_cache import CachedBatches, ResultCache
from app.engine.manifest import ModelManifest
from app.engine.models.batches import BatchService, attention_service, token_service
from app.engine.models.tokenization import TokenizedText
from app.engine.passes.pipeline import Pipeline
from app.metrics import Metrics

# Attention requests are few, large and slow: small batches, no wait, a short queue.
ATTENTION_LIMITS = BatchLimits(
    max_batch_size=8, max_batch_tokens=4096, max_wait_s=0.0, max_queue=64
)


class ModelRunner:
    """Runs one model's forward passes in dynamic batches, on one or more instances."""

    def __init__(
        self,
        manifest: ModelManifest,
        pipelines: list[Pipeline],  # one per model instance, each its own session
        limits: BatchLimits,
        *,
        precision: str,
        attention: Pipeline | None = None,  # the attention graph, when exported
        metrics: Metrics | None = None,
        cache: ResultCache | None = None,  # the process's result cache; None: off
    ) -> None:
        self.manifest = manifest
        self.pipelines = pipelines
        self.pipeline = pipelines[0]
        self.attention = attention
        self.precision = precision
        # Attention has its own graph, batcher and thread, and passes that yield to the
        # embedding path's through the gate: an attention burst costs an embedding batch
        # at most one attention pass.
        self.gate = PassGate(lambda: self.batcher.queued > 0)
        self.batcher: DynamicBatcher[TokenizedText, np.ndarray] = DynamicBatcher(
            manifest.name,
            # In stages: the device thread runs only the passes; padding or packing the
            # next batch and pooling the last run beside it (app/engine/batching/batcher.py).
            [Stages(pipeline.prepare, pipeline.run, pipeline.finish) for pipeline in pipelines],
            limits,
            metrics,
            self.gate.primary,
        )
        # What requests of the main graph go through: the result cache, then the batcher.
        self.cached: CachedBatches | None = None
        if cache is not None:
            self.cached = CachedBatches(manifest.name, self.batcher, cache, metrics)
        # Per-token states (TEI's /embed_all) of an embedding graph: a rare request, so its
        # passes take the secondary path through the gate, as attention's do.
        self.token_batcher: DynamicBatcher[TokenizedText, np.ndarray] | None = None
        if manifest.task == "embedding":
            self.token_batcher = DynamicBatcher(
                token_service(manifest.name),
                self.pipeline.token_vectors,
                limits,
                gate=self.gate.secondary,
            )
        self.attention_batcher: DynamicBatcher[TokenizedText, np.ndarray] | None = None
        if attention is not None:
            self.attention_batcher = DynamicBatcher(
                attention_service(manifest.name),
                attention.attention_maps,
                ATTENTION_LIMITS,
                gate=self.gate.secondary,
            )

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def batchers(self) -> list[DynamicBatcher[Any, Any]]:
        """The inference path's batcher, then the attention and token paths' (when there)."""
        found: list[DynamicBatcher[Any, Any]] = [self.batcher]
        for batcher in (self.attention_batcher, self.token_batcher):
            if batcher is not None:
                found.append(batcher)
        return found

    def service(self, name: str) -> BatchService[TokenizedText, np.ndarray]:
        """The batch service served as `name`: the model's (behind the result cache when
        on), `attention_service(model)` or `token_service(model)`."""
        if name == self.name:
            return self.batcher if self.cached is None else self.cached
        if name == attention_service(self.name) and self.attention_batcher is not None:
            return self.attention_batcher
        if name == token_service(self.name) and self.token_batcher is not None:
            return self.token_batcher
        raise KeyError(name)

    def warm_up(self, text: str) -> None:
        """One pass per graph before serving (allocations, kernel choices)."""
        for pipeline in self.pipelines:
            pipeline.warm_up(text)
        if self.attention is not None:
            with self.attention.unobserved():
                self.attention.attention_maps(self.attention.tokenize([text]))
