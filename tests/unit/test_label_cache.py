"""The zero-shot label cache: bounded in bytes, and correct while requests interleave.

A fake encoder yields to the event loop while it "embeds", so concurrent requests evict
each other's entries between their lookup and their use; no real model is needed.
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from app.engine.contract import ClassifyOptions
from app.engine.errors import InvalidInput
from app.engine.models.encoder import Encoder, EncoderOutput
from app.engine.models.label_cache import LabelVectorCache
from app.engine.models.served import ServedModel
from app.engine.passes.pipeline import normalize

DIMENSIONS = 8
MAX_LENGTH = 64  # the fake counts one token per character
TEMPLATE = "This text is about {}."


def vector_of(text: str) -> np.ndarray:
    """A fixed pseudo-random vector per text (what the fake model 'embeds')."""
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    return rng.standard_normal(DIMENSIONS).astype(np.float32)


def expected_label_vector(template: str, label: str) -> np.ndarray:
    return normalize(vector_of(template.replace("{}", label))[None, :])[0]


@dataclass(frozen=True)
class FakeTokens:
    text: str
    truncated: bool

    @property
    def tokens(self) -> int:
        return min(len(self.text), MAX_LENGTH)


class YieldingEncoder:
    """Stands in for `Encoder`: every call yields to the event loop a random number of
    times (many more for texts with "slow" in them), and `check` runs at each of those
    points, while other requests progress."""

    def __init__(self, seed: int = 0, check: Any = None) -> None:
        self.rng = random.Random(seed)
        self.check = check or (lambda: None)
        self.embedded: list[str] = []

    async def _yield(self, texts: Sequence[str]) -> None:
        slow = any("slow" in text for text in texts)
        for _ in range(50 if slow else self.rng.randint(1, 6)):
            await asyncio.sleep(0)
            self.check()

    async def tokenize(
        self, texts: Sequence[str], *, truncate: bool, direction: str = "right"
    ) -> list[FakeTokens]:
        await self._yield(texts)
        return [FakeTokens(text, len(text) > MAX_LENGTH) for text in texts]

    async def run_tokenized(
        self, encoded: list[FakeTokens], started: float | None = None
    ) -> EncoderOutput:
        await self._yield([item.text for item in encoded])
        self.embedded.extend(item.text for item in encoded)
        vectors = np.stack([vector_of(item.text) for item in encoded])
        return EncoderOutput(vectors, sum(item.tokens for item in encoded))

    async def run(self, texts: Sequence[str], *, truncate: bool = True) -> EncoderOutput:
        return await self.run_tokenized(await self.tokenize(texts, truncate=truncate))


def served(encoder: YieldingEncoder, cache_bytes: int) -> ServedModel:
    manifest = SimpleNamespace(
        name="fake", task="embedding", dimensions=DIMENSIONS, max_length=MAX_LENGTH
    )
    return ServedModel(cast(Any, manifest), cast(Encoder, encoder), label_cache_bytes=cache_bytes)


def entry_bytes(template: str, label: str) -> int:
    return LabelVectorCache.cost((template, label), np.zeros(DIMENSIONS, np.float32))


# -- the cache alone -----------------------------------------------------------------


def test_the_cache_keeps_its_byte_total_within_the_bound_and_evicts_least_recent() -> None:
    bound = 3 * entry_bytes(TEMPLATE, "label-00")
    cache = LabelVectorCache(bound)
    for index in range(10):
        cache.put((TEMPLATE, f"label-{index:02}"), np.full(DIMENSIONS, index, np.float32))
        assert cache.nbytes <= bound
    assert len(cache) == 3
    assert cache.get((TEMPLATE, "label-06")) is None
    assert cache.get((TEMPLATE, "label-07")) is not None  # now the most recent
    cache.put((TEMPLATE, "label-10"), np.zeros(DIMENSIONS, np.float32))
    assert cache.get((TEMPLATE, "label-07")) is not None
    assert cache.get((TEMPLATE, "label-08")) is None  # the least recent went first
    assert cache.nbytes == 3 * entry_bytes(TEMPLATE, "label-00") == bound


def test_keys_count_toward_the_bound() -> None:
    bound = 4 * entry_bytes(TEMPLATE, "x")
    cache = LabelVectorCache(bound)
    long_template = "t" * 1000 + "{}"
    for index in range(10):
        cache.put((long_template, f"{index}"), np.zeros(DIMENSIONS, np.float32))
        assert cache.nbytes <= bound
    # A 1 KB key costs as much as several vectors: fewer such entries fit.
    assert len(cache) < 4


def test_an_entry_larger_than_the_bound_is_not_kept_and_zero_turns_the_cache_off() -> None:
    cache = LabelVectorCache(100)
    cache.put((TEMPLATE, "a"), np.zeros(DIMENSIONS, np.float32))
    assert len(cache) == 0 and cache.nbytes == 0
    off = LabelVectorCache(0)
    off.put((TEMPLATE, "a"), np.zeros(1, np.float32))
    assert len(off) == 0


def test_stored_vectors_own_their_memory() -> None:
    batch = np.ones((64, DIMENSIONS), np.float32)
    cache = LabelVectorCache(1 << 20)
    cache.put((TEMPLATE, "a"), batch[3])
    stored = cache.get((TEMPLATE, "a"))
    assert stored is not None and stored.base is None  # a view would pin the whole batch
    batch[3] = 0
    assert stored.tolist() == [1.0] * DIMENSIONS


# -- the served model under concurrent zero-shot requests ----------------------------


def test_a_request_whose_cached_labels_are_evicted_while_it_awaits_gets_right_vectors() -> None:
    """The old cache raised KeyError (a 500) here: request A found `x` cached, awaited the
    embedding of its other labels (slowly), and meanwhile request B's labels evicted `x`
    and B's entries were then evicted by A's."""
    bound = 4 * entry_bytes(TEMPLATE, "label-00")

    async def scenario() -> None:
        encoder = YieldingEncoder(seed=1)
        model = served(encoder, bound)
        await model.zero_shot(["warm"], ["x"], TEMPLATE)  # x is now cached
        first = ["x", "slow 1", "slow 2"]
        second = [f"b{index}" for index in range(6)]
        results = await asyncio.gather(
            model._label_embeddings(TEMPLATE, first, time.monotonic()),
            model._label_embeddings(TEMPLATE, second, time.monotonic()),
        )
        for labels, vectors in zip((first, second), results, strict=True):
            expected = np.stack([expected_label_vector(TEMPLATE, label) for label in labels])
            np.testing.assert_allclose(vectors, expected, rtol=1e-6)
        assert model.label_cache.get((TEMPLATE, "x")) is None  # evicted while A awaited
        assert model.label_cache.nbytes <= bound

    asyncio.run(scenario())


@pytest.mark.parametrize("seed", range(5))
def test_interleaved_requests_evicting_each_other_all_get_correct_vectors(seed: int) -> None:
    pool = [f"topic {index}" for index in range(24)]
    templates = [TEMPLATE, "A review about {}!"]
    bound = 5 * entry_bytes(TEMPLATE, "topic 10")
    seen_totals: list[int] = []

    async def scenario() -> None:
        model: ServedModel

        def check() -> None:
            seen_totals.append(model.label_cache.nbytes)
            assert model.label_cache.nbytes <= bound

        encoder = YieldingEncoder(seed, check)
        model = served(encoder, bound)
        rng = random.Random(seed)
        requests = [(rng.choice(templates), rng.sample(pool, rng.randint(1, 8))) for _ in range(40)]
        results = await asyncio.gather(
            *(
                model.zero_shot(["some text"], labels, template, ClassifyOptions(raw_scores=True))
                for template, labels in requests
            )
        )
        text = normalize(vector_of("some text")[None, :])[0]
        for (template, labels), result in zip(requests, results, strict=True):
            (scores,) = result.results
            assert {score.label for score in scores} == set(labels)
            for score in scores:
                cosine = float(text @ expected_label_vector(template, score.label))
                assert score.score == pytest.approx(cosine, abs=1e-5)
        assert len(model.label_cache) <= 5

    asyncio.run(scenario())
    assert seen_totals and max(seen_totals) <= bound


def test_cached_labels_are_not_embedded_again() -> None:
    async def scenario() -> YieldingEncoder:
        encoder = YieldingEncoder()
        model = served(encoder, 1 << 20)
        await model.zero_shot(["t"], ["a", "b"], TEMPLATE)
        await model.zero_shot(["t"], ["b", "c"], TEMPLATE)
        return encoder

    encoder = asyncio.run(scenario())
    hypotheses = [text for text in encoder.embedded if text != "t"]
    assert sorted(hypotheses) == sorted(TEMPLATE.replace("{}", x) for x in "abc")


def test_templates_are_filled_by_replacement_never_formatted() -> None:
    async def scenario() -> YieldingEncoder:
        encoder = YieldingEncoder()
        await served(encoder, 1 << 20).zero_shot(["t"], ["{0.__class__}", "{:>9}"], "<{}>")
        return encoder

    encoder = asyncio.run(scenario())
    assert {"<{0.__class__}>", "<{:>9}>"} <= set(encoder.embedded)


@pytest.mark.parametrize("template", ["{:>999999999}", "{0.__class__}", "{}{}", "{{}}", "none"])
def test_the_engine_refuses_templates_that_are_not_one_placeholder(template: str) -> None:
    model = served(YieldingEncoder(), 1 << 20)
    with pytest.raises(InvalidInput, match="hypothesis_template"):
        asyncio.run(model.zero_shot(["t"], ["a"], template))


def test_a_label_that_truncation_would_cut_off_is_refused_by_name() -> None:
    encoder = YieldingEncoder()
    model = served(encoder, 1 << 20)
    long_label = "y" * MAX_LENGTH
    with pytest.raises(InvalidInput, match=r"candidate_labels\[1\].*max length of model"):
        asyncio.run(model.zero_shot(["t"], ["short", long_label], TEMPLATE))
    assert len(model.label_cache) == 0  # nothing cached, no text embedded
    assert encoder.embedded == []
