"""An encoder: the request side of one model, turning texts into vectors.

It tokenizes in the calling process and sends token ids to the model's batch service:
the batcher of the model's `ModelRunner` (app/engine/runner.py), in this process with
one worker, in the engine process with several (app/engine/remote.py). Several served
models may share one encoder (a trained head on a base model), so their inputs go
through the same batches and the same forward passes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from app.engine.attention import AttentionEncoder
from app.engine.batcher import BatchService
from app.engine.errors import InputTooLong
from app.engine.manifest import ModelManifest
from app.engine.tokenization import (
    TextTokenizer,
    Token,
    TokenizedText,
    tokenize_without_stalling,
)


@dataclass(frozen=True)
class EncoderOutput:
    vectors: np.ndarray  # float32 (inputs, width): pooled states, or logits for classifier graphs
    tokens: int  # tokens processed, without padding


class Encoder:
    """Turns texts into vectors for one model: tokenize here, then the forward passes
    through its batch service (the model's batcher, in this process or the engine's)."""

    def __init__(
        self,
        manifest: ModelManifest,
        tokenizer: TextTokenizer,
        batches: BatchService[TokenizedText, np.ndarray],
        request_timeout_s: float,
        *,
        tokenize_executor: Executor | None = None,
        attention: AttentionEncoder | None = None,
    ) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.batches = batches
        self.request_timeout_s = request_timeout_s
        self._tokenize_executor = tokenize_executor
        self.attention = attention

    @property
    def name(self) -> str:
        return self.manifest.name

    async def tokenize(self, texts: Sequence[str], *, truncate: bool) -> list[TokenizedText]:
        encoded = await tokenize_without_stalling(
            list(texts), self.tokenizer.encode, self._tokenize_executor
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
            list(texts), self.tokenizer.token_lists, self._tokenize_executor
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
        vectors = await self.batches.process([(item, item.tokens) for item in encoded], remaining)
        tokens = sum(item.tokens for item in encoded)
        return EncoderOutput(np.stack(vectors), tokens)
