"""An encoder: one graph with its tokenizer, backend and batcher, turning texts into vectors.

Several served models may share one encoder (a trained head on a base model), so
their inputs go through the same batches and the same forward passes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.backends.base import Backend
from app.engine.attention import AttentionEncoder
from app.engine.batcher import BatchLimits, DynamicBatcher
from app.engine.errors import InputTooLong
from app.engine.manifest import ModelManifest
from app.engine.packing import packed_inputs, packed_passes, pool_spans
from app.engine.pooling import pool
from app.engine.tokenization import TextTokenizer, TokenizedText, pad_batch
from app.metrics import Metrics

# Above this many characters a request is tokenized in a worker thread, so one
# large request cannot stall the event loop for everyone else.
INLINE_TOKENIZE_CHARS = 4096


@dataclass(frozen=True)
class EncoderOutput:
    vectors: np.ndarray  # float32 (inputs, width): pooled states, or logits for classifier graphs
    tokens: int  # tokens processed, without padding


class Encoder:
    """Runs texts through one model graph in dynamic batches."""

    def __init__(
        self,
        manifest: ModelManifest,
        tokenizer: TextTokenizer,
        backend: Backend,
        limits: BatchLimits,
        request_timeout_s: float,
        metrics: Metrics | None = None,
        forward_batch_size: int = 0,
    ) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.backend = backend
        self.request_timeout_s = request_timeout_s
        self._metrics = metrics
        self.forward_batch_size = forward_batch_size or limits.max_batch_size
        self.batcher: DynamicBatcher[TokenizedText, np.ndarray] = DynamicBatcher(
            manifest.name, self.forward, limits, metrics
        )
        self.precision = "fp32"
        # Its own graph, batcher and thread: attention requests never slow this path.
        self.attention: AttentionEncoder | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    def forward(self, items: list[TokenizedText]) -> list[np.ndarray]:
        """A batch from the queue (worker thread): a vector per input, in order.

        It runs as passes of at most `forward_batch_size` rows. On CPU, padding and
        attention's quadratic cost weigh more than batching gains, so small passes
        with little padding are fastest (measured on 2 cores: random batches of 32 ran
        at 101 sequences/s in one pass, 160 in length-sorted passes of 8, 200 packed).
        Where the graph takes packed rows, short inputs share rows; otherwise each row
        is one input, and neighbours in length share a pass.
        """
        if self.backend.packed:
            return self._forward_packed(items)
        size = self.forward_batch_size
        if len(items) <= size:
            return self._forward_pass(items)
        return [
            vector
            for start in range(0, len(items), size)
            for vector in self._forward_pass(items[start : start + size])
        ]

    def warm_up(self, text: str) -> None:
        """One pass before serving (allocations, kernel choices), kept out of the metrics."""
        items = self.tokenizer.encode([text])
        self.backend.run(
            packed_inputs(items, [[0]])[0] if self.backend.packed else pad_batch(items)
        )
        if self.attention is not None:
            self.attention.forward(self.tokenizer.encode([text]))

    def _forward_pass(self, items: list[TokenizedText]) -> list[np.ndarray]:
        inputs = pad_batch(items)
        self._observe_pass(len(items), inputs["input_ids"].size)
        outputs = self.backend.run(inputs)
        if "logits" in outputs:  # a sequence-classification graph pools and classifies itself
            vectors = outputs["logits"]
        else:
            vectors = pool(
                outputs["last_hidden_state"], inputs["attention_mask"], self.manifest.pooling
            )
        return list(vectors.astype(np.float32, copy=False))

    def _forward_packed(self, items: list[TokenizedText]) -> list[np.ndarray]:
        vectors: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(items)
        lengths = [item.tokens for item in items]
        for rows in packed_passes(lengths, self.forward_batch_size):
            inputs, spans = packed_inputs(items, rows)
            self._observe_pass(len(spans), inputs["input_ids"].size)
            hidden = self.backend.run(inputs)["last_hidden_state"]
            pooled = pool_spans(hidden, spans, self.manifest.pooling).astype(np.float32)
            indices = (index for row in rows for index in row)
            for index, vector in zip(indices, pooled, strict=True):
                vectors[index] = vector
        return vectors

    def _observe_pass(self, inputs: int, padded_tokens: int) -> None:
        if self._metrics is not None:
            self._metrics.batch_size.labels(self.name).observe(inputs)
            self._metrics.batch_tokens.labels(self.name).observe(padded_tokens)

    async def tokenize(self, texts: Sequence[str], *, truncate: bool) -> list[TokenizedText]:
        batch = list(texts)
        if sum(map(len, batch)) > INLINE_TOKENIZE_CHARS:
            encoded = await asyncio.to_thread(self.tokenizer.encode, batch)
        else:
            encoded = self.tokenizer.encode(batch)
        if not truncate:
            for index, item in enumerate(encoded):
                if item.truncated:
                    raise InputTooLong(
                        f"inputs[{index}] is longer than the model's max length of "
                        f"{self.manifest.max_length} tokens; shorten it or set truncate to true"
                    )
        return encoded

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
