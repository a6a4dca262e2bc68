"""An encoder: the request side of one model, turning texts into vectors.

It tokenizes in the calling process and sends token ids to the model's batch service:
the batcher of the model's `ModelRunner` (app/engine/passes/runner.py), in this process with
one worker, in the engine process with several (app/engine/transport/client.py). Several served
models may share one encoder (a trained head on a base model), so their inputs go
through the same batches and the same forward passes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from app.engine.contract import TruncationDirection
from app.engine.models.attention import AttentionEncoder
from app.engine.errors import InputTooLong, InvalidInput
from app.engine.models.batches import BatchService, settle
from app.engine.manifest import ModelManifest
from app.engine.models.tokenization import (
    INLINE_DECODE_IDS,
    TextInput,
    TextTokenizer,
    Token,
    TokenizedText,
    tokenize_without_stalling,
)


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Scale rows to unit L2 length (a zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


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
        token_batches: BatchService[TokenizedText, np.ndarray] | None = None,
    ) -> None:
        """`token_batches`: the batch service of per-token states (embedding graphs only)."""
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.batches = batches
        self.token_batches = token_batches
        self.request_timeout_s = request_timeout_s
        self._tokenize_executor = tokenize_executor
        self.attention = attention

    @property
    def name(self) -> str:
        return self.manifest.name

    async def tokenize(
        self,
        texts: Sequence[TextInput],
        *,
        truncate: bool,
        direction: TruncationDirection = "right",
    ) -> list[TokenizedText]:
        """Token ids of each input, truncated at `direction`'s end (InputTooLong instead
        when not `truncate`)."""
        if not self.tokenizer.encodes_pairs and any(not isinstance(t, str) for t in texts):
            raise InvalidInput(
                f"model '{self.name}' cannot take sentence pairs: its tokenizer has no pair "
                "template (no [SEP] between the texts); send single texts"
            )
        encoded = await tokenize_without_stalling(
            list(texts),
            lambda items: self.tokenizer.encode(items, direction),
            self._tokenize_executor,
        )
        if not truncate:
            for index, item in enumerate(encoded):
                if item.truncated:
                    raise InputTooLong(
                        f"inputs[{index}] is longer than the model's max length of "
                        f"{self.manifest.max_length} tokens; shorten it or set truncate to true"
                    )
        return encoded

    async def tokenize_query_pairs(
        self, query: str, documents: Sequence[str], *, truncate: bool
    ) -> list[TokenizedText]:
        """Rerank pairs: the query tokenized once, each document cut at its end to fit."""
        if not self.tokenizer.encodes_pairs:
            raise InvalidInput(
                f"model '{self.name}' cannot take (query, document) pairs: its tokenizer has "
                "no pair template (no [SEP] between the texts)"
            )

        def encode(texts: list[str]) -> list[TokenizedText]:
            return self.tokenizer.encode_query_pairs(query, texts)

        encoded = await tokenize_without_stalling(list(documents), encode, self._tokenize_executor)
        if not truncate:
            for index, item in enumerate(encoded):
                if item.truncated:
                    raise InputTooLong(
                        f"documents[{index}] with the query is longer than the model's max "
                        f"length of {self.manifest.max_length} tokens; shorten it or set "
                        "truncate to true"
                    )
        return encoded

    async def token_spans(
        self, texts: Sequence[str], *, add_special_tokens: bool = True
    ) -> list[tuple[list[Token], bool]]:
        """Each text's tokens with character spans, and whether it was truncated."""
        return await tokenize_without_stalling(
            list(texts),
            lambda items: self.tokenizer.token_lists(items, add_special_tokens),
            self._tokenize_executor,
        )

    async def decode(self, ids: list[list[int]], *, skip_special_tokens: bool) -> list[str]:
        """Texts of token ids; off the event loop when there are many."""
        if sum(map(len, ids)) <= INLINE_DECODE_IDS:
            return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        return await asyncio.get_running_loop().run_in_executor(
            self._tokenize_executor,
            lambda: self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens),
        )

    async def token_states(
        self, texts: Sequence[str], *, truncate: bool, direction: TruncationDirection = "right"
    ) -> tuple[list[np.ndarray], int]:
        """Each text's (tokens, hidden) last hidden states, special tokens included, and
        the tokens counted.

        Each input goes to the token service as a request of its own (the batcher still
        runs them in shared passes): an answer holds one array, whatever the lengths.
        """
        if self.token_batches is None:
            raise InvalidInput(
                f"model '{self.name}' is a {self.manifest.task} model: token embeddings come "
                "from an embedding model"
            )
        started = time.monotonic()
        encoded = await self.tokenize(texts, truncate=truncate, direction=direction)
        remaining = self.request_timeout_s - (time.monotonic() - started)
        batches = self.token_batches
        tasks: list[asyncio.Future[list[np.ndarray]]] = [
            asyncio.ensure_future(batches.process([(item, item.tokens)], remaining))
            for item in encoded
        ]
        try:
            answers = await asyncio.gather(*tasks)
        finally:
            settle(tasks)  # the first failure fails the request: drop the rest
        return [states for (states,) in answers], sum(item.tokens for item in encoded)

    async def run(
        self,
        texts: Sequence[TextInput],
        *,
        truncate: bool = True,
        direction: TruncationDirection = "right",
    ) -> EncoderOutput:
        """Vectors of `texts`, in input order, through the batcher, within the request timeout."""
        started = time.monotonic()
        encoded = await self.tokenize(texts, truncate=truncate, direction=direction)
        return await self.run_tokenized(encoded, started)

    async def run_tokenized(
        self, encoded: list[TokenizedText], started: float | None = None, *, low: bool = False
    ) -> EncoderOutput:
        """Vectors of already tokenized inputs; the timeout counts from `started` (default
        now); `low`: at low priority (an explanation's perturbations)."""
        started = time.monotonic() if started is None else started
        remaining = self.request_timeout_s - (time.monotonic() - started)
        payloads = [(item, item.tokens) for item in encoded]
        vectors = await self.batches.process(payloads, remaining, low=low)
        tokens = sum(item.tokens for item in encoded)
        return EncoderOutput(np.stack(vectors), tokens)
