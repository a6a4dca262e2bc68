"""Attention maps: run the attention graph in its own small batcher, select and aggregate.

Attention requests are few, large and slow, so they get their own batcher, session and
worker thread (app/engine/passes/runner.py), and their passes yield to the embedding path's
(app/engine/batching/pass_gate.py).
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from app.engine.contract import Aggregate, AttentionMap, Token
from app.engine.errors import InvalidInput, PayloadTooLarge
from app.engine.models.batches import BatchService
from app.engine.models.tokenization import (
    TextTokenizer,
    TokenizedText,
    tokenize_without_stalling,
)

# Rounding keeps payloads small; 5 decimals keep every row's sum within 1e-3 of 1
# even at the token limit (128 x 5e-6 worst case).
ATTENTION_DECIMALS = 5


def select(values: list[int] | None, count: int, what: str) -> list[int]:
    """Validated indices (all when None), in the order asked."""
    if values is None:
        return list(range(count))
    if not values:
        raise InvalidInput(f"{what} must not be empty; omit it for all {count}")
    wrong = [value for value in values if not 0 <= value < count]
    if wrong:
        raise InvalidInput(f"{what} {wrong} out of range: the model has {count} (0-{count - 1})")
    if len(set(values)) != len(values):
        raise InvalidInput(f"{what} must be distinct, got {values}")
    return values


def rollout(maps: np.ndarray) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020) of (layers, heads, n, n) probabilities.

    Per layer: average the heads, add the identity for the residual path, renormalize
    the rows; then multiply the layers through, first layer rightmost.
    """
    n = maps.shape[-1]
    result = np.eye(n, dtype=np.float64)
    for layer in maps.astype(np.float64):
        mixed = layer.mean(axis=0) + np.eye(n)
        mixed /= mixed.sum(axis=-1, keepdims=True)
        result = mixed @ result
    return result


def aggregate(maps: np.ndarray, how: Aggregate) -> np.ndarray:
    if how == "none":
        return maps
    if how == "mean":
        return maps.mean(axis=1)
    return rollout(maps)


class AttentionEncoder:
    """Answers attention maps for one model: tokenize at the attention limit, run the
    attention graph through its batch service, select and aggregate."""

    def __init__(
        self,
        name: str,
        tokenizer: TextTokenizer,  # cuts at the attention token limit, not the model's
        num_layers: int,
        num_heads: int,
        batches: BatchService[TokenizedText, np.ndarray],  # the attention graph's batcher
        request_timeout_s: float,
        tokenize_executor: Executor | None = None,
    ) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.max_tokens = tokenizer.max_length
        self.batches = batches
        self.request_timeout_s = request_timeout_s
        self._tokenize_executor = tokenize_executor

    async def attention(
        self,
        text: str,
        *,
        layers: list[int] | None,
        heads: list[int] | None,
        how: Aggregate,
        truncate: bool,
    ) -> AttentionMap:
        chosen_layers = select(layers, self.num_layers, "layers")
        chosen_heads = select(heads, self.num_heads, "heads")
        # This tokenizer truncates at the attention token limit, not the model's.
        ((tokens, truncated),) = await tokenize_without_stalling(
            [text], self.tokenizer.token_lists, self._tokenize_executor
        )
        if truncated and not truncate:
            raise PayloadTooLarge(
                f"the input has more than {self.max_tokens} tokens, the limit for attention "
                "maps; set truncate to true to cut it"
            )
        item = TokenizedText(
            ids=np.asarray([token.id for token in tokens], dtype=np.int64),
            type_ids=np.zeros(len(tokens), dtype=np.int64),
            truncated=False,
        )
        (maps,) = await self.batches.process([(item, item.tokens)], self.request_timeout_s)
        picked = maps[np.ix_(chosen_layers, chosen_heads)]
        result = np.round(aggregate(picked, how), ATTENTION_DECIMALS).astype(np.float32)
        return AttentionMap(
            tokens, self.num_layers, self.num_heads, chosen_layers, chosen_heads, result
        )
