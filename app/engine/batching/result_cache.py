"""The result cache (ENCODER_CACHE_BYTES): a model's answer to an input it has already run,
taken in front of its batcher so a repeated input costs no forward pass.

Where it sits, and why there: in the process that runs the passes (the engine process with
several workers, the only process with one), between the request side and the model's
`DynamicBatcher`. So every worker shares one cache and one count of hits, and a cache
lives exactly as long as the loaded model it answers for: a model replaced on disk is
loaded by a new engine process, with an empty cache. A hit still pays the worker → engine
round trip (about 50 µs of CPU on the socket) and everything on the HTTP side.

What the key is: the model's whole input, every field of `TokenizedText` (token ids,
segment ids, ...), the generation of the model's load, and nothing else. Whatever a request
option changes before the pass (truncation, a sentence pair, a prompt or a truncation
direction a route may add) changes the ids and so the key, by construction: no list of
options to keep in step. Whatever it changes after the pass (normalize, dimensions, a
head model's head, softmax or sigmoid, top_k, raw_scores) is applied to the cached raw output
by the request side, as to a fresh one. The answer cached is the pass's output row
(pooled vector or logits), byte for byte what the batcher returned the first time.

Only normal-priority inputs of a model's main graph use it: an explanation's perturbations
(low priority) are many, seldom repeated, and would push out what interactive traffic
repeats; per-token states and attention maps are large and rare.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Hashable, Sequence
from dataclasses import fields
from typing import cast

import numpy as np
from cachetools import LRUCache

from app.engine.models.batches import BatchService
from app.engine.models.tokenization import TokenizedText
from app.metrics import Metrics

# What an entry costs beyond its key and answer objects: its slots in cachetools' three
# dicts (items, sizes, recency order) and the int of its size. Measured with tracemalloc
# at about 230 bytes on CPython 3.11 (tests/unit/test_result_cache.py holds the total).
ENTRY_OVERHEAD = 256

Key = tuple[Hashable, ...]

# A new number for every model load in this process: a key never matches an answer of
# another load of a model of the same name (a model replaced without a restart).
_generations = itertools.count(1)


# The fields of a model input, read once: a field added to `TokenizedText` is part of the
# key without a change here.
_INPUT_FIELDS = tuple(field.name for field in fields(TokenizedText))


def input_key(item: TokenizedText) -> tuple[Hashable, ...]:
    """Every field of the model input; an array as one bytes object of its dtype, shape and
    data (flat, so an entry's cost is quick to count)."""
    parts: list[Hashable] = []
    for name in _INPUT_FIELDS:
        value = getattr(item, name)
        if isinstance(value, np.ndarray):
            parts.append(f"{value.dtype.str}{value.shape}".encode() + value.tobytes())
        else:
            parts.append(value)
    return tuple(parts)


def entry_cost(key: Key, answer: np.ndarray) -> int:
    """Bytes an entry holds: the key tuple and its parts, the answer array (header and
    data) and the containers' share."""
    size = sys.getsizeof(key) + sys.getsizeof(answer) + ENTRY_OVERHEAD
    for part in key:
        size += sys.getsizeof(part)
    return size


class ResultCache:
    """Answers by key, least recently used out first, bounded in bytes (cachetools'
    `LRUCache` with each entry's cost). One per process, shared by every model: the bound
    is the whole cache's. Synchronous, used from the event loop thread only."""

    def __init__(self, max_bytes: int, on_size: Callable[[int], None] = lambda _: None) -> None:
        self.max_bytes = max_bytes
        self._entries: LRUCache[Key, tuple[np.ndarray, int]] = LRUCache(
            max_bytes, getsizeof=lambda entry: entry[1]
        )
        self._on_size = on_size  # told the bytes held after every change

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return int(self._entries.currsize)

    def get(self, key: Key) -> np.ndarray | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def put(self, key: Key, answer: np.ndarray) -> None:
        """Keep a copy of `answer` (a row of a batch's output would pin the whole batch),
        read-only since every later hit shares it; one larger than the cache is skipped."""
        kept = np.array(answer, copy=True)
        kept.flags.writeable = False
        cost = entry_cost(key, kept)
        if cost > self.max_bytes:
            return
        self._entries[key] = (kept, cost)
        self._on_size(self.nbytes)


class CachedBatches:
    """A model's batch service with the result cache in front: hits answer at once, the
    misses go to the batcher as one request, and their answers are kept. Hits and misses
    are counted per input under the model's name."""

    def __init__(
        self,
        name: str,
        batches: BatchService[TokenizedText, np.ndarray],
        cache: ResultCache,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self._batches = batches
        self._cache = cache
        self._generation = next(_generations)
        self._hits = self._misses = None
        if metrics is not None:
            # Labelled now, so the series are there (at 0) before the first request.
            self._hits = metrics.cache_hits.labels(name)
            self._misses = metrics.cache_misses.labels(name)
            self._hits.inc(0)
            self._misses.inc(0)

    async def process(
        self,
        payloads: Sequence[tuple[TokenizedText, int]],
        timeout_s: float,
        *,
        low: bool = False,
    ) -> list[np.ndarray]:
        if low:
            return await self._batches.process(payloads, timeout_s, low=True)
        keys = [(self._generation, *input_key(item)) for item, _ in payloads]
        answers: list[np.ndarray | None] = [self._cache.get(key) for key in keys]
        # The misses go to the batcher as they are, a text repeated within the request
        # included: the pass is then the one a server without the cache runs for the same
        # request, and its answers the same bytes (an input's output moves in the last bits
        # with the rest of its pass, packed or padded; see README "Result cache").
        missing = [index for index, answer in enumerate(answers) if answer is None]
        if self._hits is not None and self._misses is not None:
            self._hits.inc(len(keys) - len(missing))
            self._misses.inc(len(missing))
        if missing:
            results = await self._batches.process([payloads[i] for i in missing], timeout_s)
            for index, result in zip(missing, results, strict=True):
                self._cache.put(keys[index], result)
                answers[index] = result
        return cast(list[np.ndarray], answers)
