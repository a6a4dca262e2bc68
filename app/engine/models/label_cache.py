"""The zero-shot label embeddings a model keeps, bounded in bytes (ENCODER_LABEL_CACHE_BYTES)."""

from __future__ import annotations

import sys

import numpy as np
from cachetools import LRUCache

# Zero-shot label embeddings cached per model, in bytes (ENCODER_LABEL_CACHE_BYTES).
DEFAULT_LABEL_CACHE_BYTES = 32 * 1024 * 1024


class LabelVectorCache:
    """Label embeddings by (template, label), least recently used first out, bounded in bytes
    (cachetools' LRUCache, as the result cache: app/engine/batching/result_cache.py).

    An entry costs its key strings and its vector (`sys.getsizeof`, so headers count too);
    the total never exceeds `max_bytes`. Every method is synchronous: callers that await
    between a lookup and a use must keep what they looked up, since another request may
    evict it meanwhile.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # Each value is (vector, its cost with its key's), so the cache can weigh it.
        self._entries: LRUCache[tuple[str, str], tuple[np.ndarray, int]] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda entry: entry[1]
        )

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return int(self._entries.currsize)

    @staticmethod
    def cost(key: tuple[str, str], vector: np.ndarray) -> int:
        return sys.getsizeof(key[0]) + sys.getsizeof(key[1]) + sys.getsizeof(vector)

    def get(self, key: tuple[str, str]) -> np.ndarray | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def put(self, key: tuple[str, str], vector: np.ndarray) -> None:
        """Keep `vector` (copied: a row of a batch would pin the whole batch in memory)."""
        vector = np.array(vector, dtype=np.float32, copy=True)
        size = self.cost(key, vector)
        if size > self.max_bytes:
            return  # would not fit even alone
        self._entries[key] = (vector, size)
