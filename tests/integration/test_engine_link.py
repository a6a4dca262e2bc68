"""A front-end worker's engine against the engine process's service, in one event loop.

The real `minilm` runs behind `EngineService` on a Unix socket; `RemoteEngine` talks to
it exactly as a worker process does. Answers must equal the in-process engine's, and
deadlines, admission, cancellation and the engine going away must cross the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from app.config import Settings
from app.engine.contract import ClassifyOptions, TokenIds
from app.engine.errors import DeadlineExceeded, NotReady, Overloaded
from app.engine.in_process import InProcessEngine
from app.engine.transport.client import RemoteEngine
from app.engine.transport.server import serve_engine


class HeldBackend:
    """The real backend, holding each pass until `release` is set; records the ids run."""

    def __init__(self, real) -> None:  # type: ignore[no-untyped-def]
        self.real = real
        self.name, self.device, self.packed = real.name, real.device, real.packed
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.ran: list[int] = []

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.set()
        self.release.wait(30)
        self.ran.extend(int(i) for i in np.unique(inputs["input_ids"]))
        return self.real.run(inputs)


@dataclass
class Linked:
    local: InProcessEngine
    remote: RemoteEngine
    held: HeldBackend
    stop: asyncio.Event
    serving: asyncio.Task[None]


@contextlib.asynccontextmanager
async def linked(models: Path, tmp_path: Path, **overrides: object) -> AsyncIterator[Linked]:
    settings = Settings(models_dir=models, models=["minilm"], instances=1, **overrides)  # type: ignore[arg-type]
    local = await asyncio.to_thread(InProcessEngine.load, settings, None, warm_up=False)
    runner = local.registry.runners["minilm"]
    held = HeldBackend(runner.pipeline.backend)
    runner.pipeline.backend = held
    path = tmp_path / "engine.sock"
    stop = asyncio.Event()
    serving = asyncio.create_task(serve_engine(local, path, 5.0, stop))
    remote = await asyncio.to_thread(RemoteEngine.load, settings, None, path)
    await asyncio.wait_for(remote.start(), 30)
    try:
        yield Linked(local, remote, held, stop, serving)
    finally:
        held.release.set()
        await remote.close()
        stop.set()
        await serving


TEXTS = [f"sentence number {i} about {'rivers' if i % 2 else 'markets'}" for i in range(40)]


async def test_remote_answers_equal_in_process_ones(default_models: Path, tmp_path: Path) -> None:
    async with linked(default_models, tmp_path) as link:
        assert link.remote.models() == link.local.models()
        assert link.remote.not_ready() is None
        here = await link.local.embed("minilm", TEXTS[:5], dimensions=64)
        there = await link.remote.embed("minilm", TEXTS[:5], dimensions=64)
        np.testing.assert_allclose(there.vectors, here.vectors, atol=1e-6)
        assert there.tokens == here.tokens
        ids = (await link.remote.tokenize("minilm", ["token ids travel too"])).tokens[0]
        by_ids = await link.remote.embed("minilm", TokenIds([[token.id for token in ids]]))
        np.testing.assert_allclose(
            by_ids.vectors, (await link.local.embed("minilm", ["token ids travel too"])).vectors,
            atol=1e-6,
        )  # fmt: skip
        options = ClassifyOptions()
        labels = ["finance", "nature"]
        here_zs = await link.local.zero_shot("minilm", TEXTS[:4], labels, "about {}", options)
        there_zs = await link.remote.zero_shot("minilm", TEXTS[:4], labels, "about {}", options)
        for mine, theirs in zip(here_zs.results, there_zs.results, strict=True):
            assert [s.label for s in mine] == [s.label for s in theirs]
            assert mine[0].score == pytest.approx(theirs[0].score, abs=1e-5)
        kwargs = {"layers": [0, 5], "heads": None, "how": "mean", "truncate": True}
        here_map = await link.local.attention("minilm", "the river rose", **kwargs)  # type: ignore[arg-type]
        there_map = await link.remote.attention("minilm", "the river rose", **kwargs)  # type: ignore[arg-type]
        assert there_map.tokens == here_map.tokens
        np.testing.assert_allclose(there_map.attentions, here_map.attentions, atol=1e-5)


async def test_concurrent_requests_are_answered_once_each_with_their_own_vectors(
    default_models: Path, tmp_path: Path
) -> None:
    async with linked(default_models, tmp_path) as link:
        expected = (await link.local.embed("minilm", TEXTS)).vectors
        answers = await asyncio.gather(*(link.remote.embed("minilm", [text]) for text in TEXTS))
        for index, answer in enumerate(answers):
            np.testing.assert_allclose(answer.vectors[0], expected[index], atol=1e-5)
        assert link.local.registry.runners["minilm"].batcher.pending == 0


async def test_a_cancelled_request_leaves_the_engine_queue(
    default_models: Path, tmp_path: Path
) -> None:
    async with linked(default_models, tmp_path) as link:
        batcher = link.local.registry.runners["minilm"].batcher
        link.held.release.clear()
        link.held.entered.clear()
        first = asyncio.create_task(link.remote.embed("minilm", ["the pass being held"]))
        await asyncio.to_thread(link.held.entered.wait, 10)
        marker = "xylophone"
        marker_id = (
            link.remote.registry.get("minilm", "embedding")
            .encoder.tokenizer.encode([marker])[0]
            .ids[1]
        )
        second = asyncio.create_task(link.remote.embed("minilm", [marker]))
        while batcher.queued == 0:
            await asyncio.sleep(0.01)
        second.cancel()
        await asyncio.sleep(0.2)  # the cancel frame reaches the engine
        link.held.release.set()
        await first
        while batcher.pending:  # the queue drops the cancelled input before a next pass
            await asyncio.sleep(0.01)
        assert int(marker_id) not in link.held.ran
        with pytest.raises(asyncio.CancelledError):
            await second


async def test_admission_and_deadlines_cross_the_socket(
    default_models: Path, tmp_path: Path
) -> None:
    async with linked(
        default_models, tmp_path, max_queue=1, max_batch_size=1, request_timeout_s=1.0
    ) as link:
        link.held.release.clear()
        link.held.entered.clear()
        running = asyncio.create_task(link.remote.embed("minilm", ["held in its pass"]))
        await asyncio.to_thread(link.held.entered.wait, 10)
        queued = asyncio.create_task(link.remote.embed("minilm", ["waits in the queue"]))
        await asyncio.sleep(0.2)
        with pytest.raises(Overloaded) as refused:
            await link.remote.embed("minilm", ["one too many"])
        assert refused.value.retry_after_s >= 1
        with pytest.raises(DeadlineExceeded):
            await queued  # its second passed while the pass ahead was held
        link.held.release.set()
        with contextlib.suppress(DeadlineExceeded):
            await running


async def test_when_the_engine_goes_away_waiting_requests_fail_at_once(
    default_models: Path, tmp_path: Path
) -> None:
    async with linked(default_models, tmp_path) as link:
        link.held.release.clear()
        link.held.entered.clear()
        waiting = asyncio.create_task(link.remote.embed("minilm", ["caught in the crash"]))
        await asyncio.to_thread(link.held.entered.wait, 10)
        link.stop.set()  # the engine stops: its drain waits for the held pass ...
        await asyncio.sleep(0.1)
        link.held.release.set()  # ... which finishes, then the connections close
        await link.serving
        await waiting  # answered before the engine went away
        with pytest.raises(NotReady):
            await link.remote.embed("minilm", ["after the engine is gone"])
        deadline = asyncio.get_running_loop().time() + 5
        while link.remote.not_ready() is None:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        assert "engine process" in (link.remote.not_ready() or "")


async def test_low_priority_crosses_the_socket_and_waits_for_normal_work(
    default_models: Path, tmp_path: Path
) -> None:
    async with linked(default_models, tmp_path) as link:
        batcher = link.local.registry.runners["minilm"].batcher
        encoder = link.remote.registry.get("minilm", "embedding").encoder
        link.held.release.clear()
        link.held.entered.clear()
        first = asyncio.create_task(link.remote.embed("minilm", ["the pass being held"]))
        await asyncio.to_thread(link.held.entered.wait, 10)
        perturbed = encoder.tokenizer.encode(["an explanation's perturbation"] * 3)
        low = asyncio.create_task(encoder.run_tokenized(perturbed, low=True))
        while batcher._queue.low_count < 3:  # queued at low priority in the engine process
            await asyncio.sleep(0.01)
        normal = asyncio.create_task(link.remote.embed("minilm", ["interactive"]))
        while batcher._queue.normal_count < 1:
            await asyncio.sleep(0.01)
        # The normal input is taken before the low ones that were queued earlier.
        first_up = next(iter(batcher._queue.round_robin()))
        assert first_up.tokens == encoder.tokenizer.encode(["interactive"])[0].tokens
        link.held.release.set()
        await first
        await normal
        assert (await low).vectors.shape[0] == 3
