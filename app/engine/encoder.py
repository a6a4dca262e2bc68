"""An encoder: one model's pipeline behind its dynamic batcher, turning texts into vectors.

Several served models may share one encoder (a trained head on a base model), so
their inputs go through the same batches and the same forward passes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from app.engine.attention import AttentionEncoder
from app.engine.batcher import BatchLimits, DynamicBatcher
from app.engine.errors import InputTooLong
from app.engine.manifest import ModelManifest
from app.engine.pass_gate import PassGate
from app.engine.pipeline import Pipeline
from app.engine.tokenization import Token, TokenizedText, tokenize_without_stalling
from app.metrics import Metrics


@dataclass(frozen=True)
class EncoderOutput:
    vectors: np.ndarray  # float32 (inputs, width): pooled states, or logits for classifier graphs
    tokens: int  # tokens processed, without padding


class Encoder:
    """Runs texts through one model's pipeline in dynamic batches."""

    def __init__(
        self,
        manifest: ModelManifest,
        pipelines: list[Pipeline],  # one per model instance, each its own session
        limits: BatchLimits,
        request_timeout_s: float,
        *,
        precision: str,
        tokenize_executor: Executor | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.manifest = manifest
        self.pipelines = pipelines
        self.pipeline = pipelines[0]  # tokenizes for all: the instances share a tokenizer
        self.precision = precision
        self.request_timeout_s = request_timeout_s
        self._tokenize_executor = tokenize_executor
        # Attention has its own graph, batcher and thread, and passes that yield to this
        # path's through the gate: an attention burst costs an embedding batch at most
        # one attention pass.
        self.gate = PassGate(lambda: self.batcher.queued > 0)
        self.batcher: DynamicBatcher[TokenizedText, np.ndarray] = DynamicBatcher(
            manifest.name,
            [pipeline.forward for pipeline in pipelines],
            limits,
            metrics,
            self.gate.primary,
        )
        self.attention: AttentionEncoder | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    def warm_up(self, text: str) -> None:
        """One pass per graph before serving (allocations, kernel choices)."""
        for pipeline in self.pipelines:
            pipeline.warm_up(text)
        if self.attention is not None:
            self.attention.warm_up(text)

    async def tokenize(self, texts: Sequence[str], *, truncate: bool) -> list[TokenizedText]:
        encoded = await tokenize_without_stalling(
            list(texts), self.pipeline.tokenize, self._tokenize_executor
        )
        if not truncate:
            for index, item in enumerate(encoded):
                if item.truncated:
                    raise InputTooLong(
                        f"inputs[{index}] is longer than the model's max length of "
                        f"{self.manifest.max_length} tokens; shorten it or set truncate to true"
                    )
        return encoded

    async def token_spans(self, texts: Sequence[str]) -> list[tuple[list[Token], bool]]:
        """Each text's tokens with character spans, and whether it was truncated."""
        return await tokenize_without_stalling(
            list(texts), self.pipeline.tokenizer.token_lists, self._tokenize_executor
        )

    async def run(self, texts: Sequence[str], *, truncate: bool = True) -> EncoderOutput:
        """Vectors of `texts`, in input order, through the batcher, within the request timeout."""
        started = time.monotonic()
        encoded = await self.tokenize(texts, truncate=truncate)
        return await self.run_tokenized(encoded, started)

    async def run_tokenized(
        self, encoded: list[TokenizedText], started: float | None = None
    ) -> EncoderOutput:
        """Vectors of already tokenized inputs; the timeout counts from `started` (default now)."""
        started = time.monotonic() if started is None else started
        remaining = self.request_timeout_s - (time.monotonic() - started)
        vectors = await self.batcher.process([(item, item.tokens) for item in encoded], remaining)
        tokens = sum(item.tokens for item in encoded)
        return EncoderOutput(np.stack(vectors), tokens)
