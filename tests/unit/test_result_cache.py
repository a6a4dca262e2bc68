"""The result cache (app/engine/batching/result_cache.py) over a fake batch service: keys,
byte bound, what reaches the batcher, counters."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Sequence

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from app.engine.batching.result_cache import CachedBatches, ResultCache, input_key
from app.engine.models.tokenization import TokenizedText
from app.metrics import Metrics

WIDTH = 384  # the default model's answer


def item(*ids: int, type_id: int = 0, truncated: bool = False) -> TokenizedText:
    array = np.asarray([101, *ids, 102], dtype=np.int64)
    return TokenizedText(array, np.full_like(array, type_id), truncated)


class FakeBatches:
    """Answers each input with a vector made from its ids; records what it was sent."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset
        self.calls: list[tuple[list[TokenizedText], bool]] = []

    async def process(
        self, payloads: Sequence[tuple[TokenizedText, int]], timeout_s: float, *, low: bool = False
    ) -> list[np.ndarray]:
        items = [payload for payload, _ in payloads]
        self.calls.append((items, low))
        await asyncio.sleep(0)
        return [self.answer(payload) for payload in items]

    def answer(self, payload: TokenizedText) -> np.ndarray:
        seed = float(payload.ids.sum() + 7 * payload.type_ids.sum()) + self.offset
        return np.full(WIDTH, seed, dtype=np.float32)

    @property
    def sent(self) -> list[int]:
        return [len(items) for items, _ in self.calls]


def counted(metrics: Metrics, name: str, model: str) -> float:
    value = metrics.registry.get_sample_value(name, {"model": model})
    return 0.0 if value is None else value


async def test_a_repeat_is_answered_from_the_cache_byte_for_byte() -> None:
    batches = FakeBatches()
    cached = CachedBatches("m", batches, ResultCache(1 << 20))
    (first,) = await cached.process([(item(5, 6), 4)], 1.0)
    (again,) = await cached.process([(item(5, 6), 4)], 1.0)
    assert batches.sent == [1]
    assert again.tobytes() == first.tobytes()
    assert not again.flags.writeable  # shared by every later hit: nobody may change it


async def test_only_the_misses_of_a_request_reach_the_batcher_in_their_order() -> None:
    batches = FakeBatches()
    cached = CachedBatches("m", batches, ResultCache(1 << 20))
    await cached.process([(item(1), 3)], 1.0)
    inputs = [item(2), item(1), item(2), item(3)]
    answers = await cached.process([(i, i.tokens) for i in inputs], 1.0)
    # 1 was cached; a text repeated within the request runs as a server without the
    # cache would run it (the same pass, so the same bytes).
    assert batches.sent == [1, 3]
    assert [i.ids[1] for i in batches.calls[1][0]] == [2, 2, 3]
    assert [a[0] for a in answers] == [batches.answer(i)[0] for i in inputs]
    await cached.process([(item(2), 3), (item(3), 3)], 1.0)
    assert batches.sent == [1, 3]


async def test_every_field_of_the_input_is_in_the_key() -> None:
    batches = FakeBatches()
    cached = CachedBatches("m", batches, ResultCache(1 << 20))
    plain, second_segment = item(4, 4), item(4, 4, type_id=1)
    assert input_key(plain) != input_key(second_segment)
    assert input_key(item(4, 4, truncated=True)) != input_key(plain)
    # The same ids as int32 are another input: the dtype is part of the key.
    narrow = TokenizedText(plain.ids.astype(np.int32), plain.type_ids, False)
    assert input_key(narrow) != input_key(plain)
    a = await cached.process([(plain, 4)], 1.0)
    b = await cached.process([(second_segment, 4)], 1.0)
    assert batches.sent == [1, 1]
    assert a[0][0] != b[0][0]


async def test_two_models_on_one_cache_never_answer_for_each_other() -> None:
    cache = ResultCache(1 << 20)
    first, second = FakeBatches(0.0), FakeBatches(1000.0)
    one, other = CachedBatches("a", first, cache), CachedBatches("b", second, cache)
    (x,) = await one.process([(item(9), 3)], 1.0)
    (y,) = await other.process([(item(9), 3)], 1.0)
    assert (first.sent, second.sent) == ([1], [1])
    assert x[0] != y[0]


async def test_a_model_loaded_again_under_the_same_name_starts_with_nothing_cached() -> None:
    """A new load (a model replaced) gets a new generation: the old answers are not its."""
    cache = ResultCache(1 << 20)
    old, new = FakeBatches(0.0), FakeBatches(1.0)
    await CachedBatches("m", old, cache).process([(item(3), 3)], 1.0)
    (answer,) = await CachedBatches("m", new, cache).process([(item(3), 3)], 1.0)
    assert new.sent == [1]
    assert answer[0] == new.answer(item(3))[0]


async def test_low_priority_inputs_bypass_the_cache() -> None:
    batches = FakeBatches()
    cache = ResultCache(1 << 20)
    cached = CachedBatches("m", batches, cache)
    await cached.process([(item(8), 3)], 1.0, low=True)
    await cached.process([(item(8), 3)], 1.0, low=True)
    assert batches.calls[0][1] is True
    assert batches.sent == [1, 1]
    assert len(cache) == 0


async def test_bounded_in_bytes_under_a_stream_of_unique_inputs() -> None:
    limit = 200_000
    sizes: list[int] = []
    cache = ResultCache(limit, sizes.append)
    cached = CachedBatches("m", FakeBatches(), cache)
    for start in range(0, 3000, 30):
        inputs = [item(*range(n, n + 20)) for n in range(start, start + 30)]
        await cached.process([(i, i.tokens) for i in inputs], 1.0)
        assert cache.nbytes <= limit
    assert max(sizes) <= limit
    # Full, not emptied: about limit / entry cost entries, the most recent ones.
    assert cache.nbytes > limit * 0.9
    assert 40 < len(cache) < 100
    newest = item(*range(2970, 2990))
    assert cache.get((cached._generation, *input_key(newest))) is not None
    oldest = item(*range(0, 20))
    assert cache.get((cached._generation, *input_key(oldest))) is None


async def test_the_bytes_counted_cover_the_memory_the_entries_really_take() -> None:
    """The bound is honest: tracemalloc's count of what the cache allocated stays within
    the bytes it says it holds (entries of the default model's size)."""
    cache = ResultCache(1 << 30)
    cached = CachedBatches("m", FakeBatches(), cache)
    inputs = [item(*range(n, n + 20)) for n in range(2000)]
    answers = [FakeBatches().answer(i) for i in inputs]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        # The keys are built here too: the cache keeps them, as it does in a request.
        for entry, answer in zip(inputs, answers, strict=True):
            cache.put((cached._generation, *input_key(entry)), answer)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) == 2000
    assert used <= cache.nbytes
    assert cache.nbytes / len(cache) < 3000  # ~2.6 KB an answer of 22 tokens


async def test_an_answer_larger_than_the_whole_cache_is_not_kept() -> None:
    cache = ResultCache(1000)
    cached = CachedBatches("m", FakeBatches(), cache)
    (answer,) = await cached.process([(item(1), 3)], 1.0)
    assert answer.shape == (WIDTH,)
    assert len(cache) == 0 and cache.nbytes == 0


async def test_hits_and_misses_are_counted_per_model_and_input() -> None:
    metrics = Metrics(CollectorRegistry())
    cache = ResultCache(1 << 20, metrics.cache_bytes.set)
    one = CachedBatches("a", FakeBatches(), cache, metrics)
    other = CachedBatches("b", FakeBatches(), cache, metrics)
    # Both series exist before any request.
    assert metrics.registry.get_sample_value("encoder_cache_hits_total", {"model": "b"}) == 0
    await one.process([(item(1), 3), (item(2), 3)], 1.0)
    await one.process([(item(1), 3), (item(1), 3), (item(3), 3)], 1.0)
    await other.process([(item(1), 3)], 1.0)
    assert counted(metrics, "encoder_cache_hits_total", "a") == 2
    assert counted(metrics, "encoder_cache_misses_total", "a") == 3  # inputs sent
    assert counted(metrics, "encoder_cache_hits_total", "b") == 0
    assert counted(metrics, "encoder_cache_misses_total", "b") == 1
    assert metrics.registry.get_sample_value("encoder_cache_bytes") == cache.nbytes > 0


async def test_a_failed_pass_caches_nothing() -> None:
    class Failing(FakeBatches):
        async def process(
            self,
            payloads: Sequence[tuple[TokenizedText, int]],
            timeout_s: float,
            *,
            low: bool = False,
        ) -> list[np.ndarray]:
            raise RuntimeError("the pass failed")

    cache = ResultCache(1 << 20)
    cached = CachedBatches("m", Failing(), cache)
    with pytest.raises(RuntimeError):
        await cached.process([(item(1), 3)], 1.0)
    assert len(cache) == 0
