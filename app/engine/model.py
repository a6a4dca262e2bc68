"""A served model: tokenizer, backend and batcher of one model, and its `embed` operation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.backends.base import Backend
from app.engine.batcher import BatchLimits, DynamicBatcher
from app.engine.errors import DeadlineExceeded, InputTooLong, InvalidInput
from app.engine.manifest import ModelManifest
from app.engine.pooling import normalize as normalize_rows
from app.engine.pooling import pool
from app.engine.tokenization import TextTokenizer, TokenizedText, pad_batch
from app.metrics import Metrics

# Above this many characters a request is tokenized in a worker thread, so one
# large request cannot stall the event loop for everyone else.
INLINE_TOKENIZE_CHARS = 4096


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # float32, (inputs, dimensions)
    tokens: int  # tokens processed, without padding


class EncoderModel:
    """One model of the repository, ready to serve."""

    def __init__(
        self,
        manifest: ModelManifest,
        tokenizer: TextTokenizer,
        backend: Backend,
        limits: BatchLimits,
        request_timeout_s: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.backend = backend
        self.request_timeout_s = request_timeout_s
        self._metrics = metrics
        self.batcher: DynamicBatcher[TokenizedText, np.ndarray] = DynamicBatcher(
            manifest.name, self.forward, limits, metrics
        )

    @property
    def name(self) -> str:
        return self.manifest.name

    def forward(self, items: list[TokenizedText]) -> list[np.ndarray]:
        """One padded forward pass (worker thread): pooled, unnormalized vectors."""
        inputs = pad_batch(items)
        hidden = self.backend.run(inputs)["last_hidden_state"]
        pooled = pool(hidden, inputs["attention_mask"], self.manifest.pooling)
        return list(pooled.astype(np.float32, copy=False))

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

    async def pooled(self, texts: Sequence[str], *, truncate: bool = True) -> Embeddings:
        """Pooled vectors of `texts`, in input order, through the batcher."""
        started = time.monotonic()
        encoded = await self.tokenize(texts, truncate=truncate)
        futures = self.batcher.submit(
            [(item, item.tokens) for item in encoded], self.request_timeout_s
        )
        tokens = sum(item.tokens for item in encoded)
        remaining = self.request_timeout_s - (time.monotonic() - started)
        try:
            vectors = await asyncio.wait_for(asyncio.gather(*futures), max(remaining, 0.0))
        except TimeoutError:
            raise DeadlineExceeded(
                f"no answer within the request timeout of {self.request_timeout_s:g} s"
            ) from None
        finally:
            for future in futures:
                future.cancel()  # no-op when done; drops queued inputs when the caller left
        if self._metrics is not None:
            self._metrics.tokens.labels(self.name).inc(tokens)
        return Embeddings(np.stack(vectors), tokens)

    async def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool = True,
        truncate: bool = True,
        dimensions: int | None = None,
    ) -> Embeddings:
        """Sentence embeddings, optionally cut to `dimensions` (Matryoshka) and normalized."""
        if dimensions is not None and not 1 <= dimensions <= self.manifest.dimensions:
            raise InvalidInput(
                f"dimensions must be between 1 and {self.manifest.dimensions} for model "
                f"'{self.name}', got {dimensions}"
            )
        result = await self.pooled(texts, truncate=truncate)
        vectors = result.vectors
        if dimensions is not None:
            vectors = vectors[:, :dimensions]
        if normalize:
            vectors = normalize_rows(vectors)
        return Embeddings(vectors.astype(np.float32, copy=False), result.tokens)
