"""Passes back to back: the batcher prepares the next batch and finishes the last one on
the host thread while the device thread runs a pass (a fake staged backend whose pass or
finishing blocks on an event), and every input is still answered exactly once, in order,
with cancellation, deadlines and shutdown as before."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field

import pytest

from app.engine.batching.batcher import BatchLimits, DynamicBatcher
from app.engine.batching.core import Stages
from app.engine.batching.scheduling import REGROUP_MIN_INPUTS, REGROUP_PASS_SHARE
from app.engine.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded


@dataclass
class StagedFake:
    """Answers payload n with n * 10 in three stages, recording which thread ran each
    stage of which batch, and when. `hold_run`: the first batch's pass waits for that
    event; `hold_finish`: the finishing of the batch of payload 1."""

    hold_run: threading.Event | None = None
    hold_finish: threading.Event | None = None
    calls: list[tuple[str, str, list[int], float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    jitter_s: float = 0.0
    run_s: float = 0.0  # how long each pass takes
    finish_s: float = 0.0  # and each batch's finishing

    def _record(self, stage: str, payloads: list[int]) -> None:
        with self.lock:
            name = threading.current_thread().name
            self.calls.append((stage, name, list(payloads), time.monotonic()))

    def _first(self, stage: str) -> bool:
        return sum(call[0] == stage for call in self.calls) == 1

    def prepare(self, payloads: list[int]) -> list[int]:
        self._record("prepare", payloads)
        if self.jitter_s:
            time.sleep(random.uniform(0, self.jitter_s))
        return list(payloads)

    def run(self, prepared: list[int]) -> list[int]:
        self._record("run", prepared)
        if self.hold_run is not None and self._first("run"):
            assert self.hold_run.wait(10), "test never released the pass"
        time.sleep(self.run_s + random.uniform(0, self.jitter_s))
        return [payload * 10 for payload in prepared]

    def finish(self, prepared: list[int], raw: list[int]) -> list[int]:
        self._record("finish", prepared)
        if self.hold_finish is not None and 1 in prepared:
            assert self.hold_finish.wait(10), "test never released the finishing"
        time.sleep(self.finish_s + random.uniform(0, self.jitter_s))
        return raw

    def stages(self) -> Stages[int, int]:
        return Stages(self.prepare, self.run, self.finish)

    def of(self, stage: str) -> list[tuple[str, list[int], float]]:
        with self.lock:
            return [(name, batch, at) for kind, name, batch, at in self.calls if kind == stage]


def make(fake: StagedFake, **limits: float) -> DynamicBatcher[int, int]:
    batcher: DynamicBatcher[int, int] = DynamicBatcher("fake", fake.stages(), BatchLimits(**limits))
    batcher.start()
    return batcher


def submit(batcher: DynamicBatcher[int, int], *payloads: int, timeout: float = 30.0):
    return batcher.submit([(p, 10) for p in payloads], timeout)


async def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


async def test_a_full_next_batch_is_prepared_on_the_host_while_the_pass_runs() -> None:
    released = threading.Event()
    fake = StagedFake(hold_run=released)
    batcher = make(fake, max_wait_s=5.0, max_batch_size=2)
    first = submit(batcher, 1)
    await wait_for(lambda: len(fake.of("run")) == 1)  # the first pass is in flight, held
    second = submit(batcher, 2, 3)  # a full batch
    await wait_for(lambda: [batch for _, batch, _ in fake.of("prepare")] == [[1], [2, 3]])
    assert not released.is_set()  # prepared before the running pass ended
    (name, _, _), (later_name, _, _) = fake.of("prepare")
    assert name.startswith("infer-")  # an idle device prepares its own batch
    assert later_name.startswith("host-")  # a busy one gets it prepared beside it
    released.set()
    assert await asyncio.wait_for(asyncio.gather(*first, *second), 5) == [10, 20, 30]
    runs = fake.of("run")
    assert [batch for _, batch, _ in runs] == [[1], [2, 3]]
    assert all(name.startswith("infer-") for name, _, _ in runs)  # passes: the device thread
    await batcher.stop()


async def test_the_device_runs_the_next_pass_while_the_last_batch_is_finished() -> None:
    """Pooling and answering are off the device thread while a batch waits behind: with
    the first batch's finishing held on the host thread, the next pass still runs;
    answers then come in order, each once."""
    running, finishing = threading.Event(), threading.Event()
    fake = StagedFake(hold_run=running, hold_finish=finishing)
    batcher = make(fake, max_wait_s=0.0, max_batch_size=2)
    first = submit(batcher, 1)
    await wait_for(lambda: len(fake.of("run")) == 1)
    second = submit(batcher, 2, 3)  # full: handed over behind the running pass
    await wait_for(lambda: len(fake.of("prepare")) == 2)
    running.set()
    await wait_for(lambda: [batch for _, batch, _ in fake.of("run")] == [[1], [2, 3]])
    await wait_for(lambda: len(fake.of("finish")) >= 1)
    name, batch, _ = fake.of("finish")[0]
    assert name.startswith("host-") and batch == [1]
    assert not any(future.done() for future in (*first, *second))  # finishing still held
    finishing.set()
    assert await asyncio.wait_for(asyncio.gather(*first, *second), 5) == [10, 20, 30]
    await batcher.stop()


async def test_a_lone_batch_is_finished_by_the_device_thread_itself() -> None:
    """With nothing handed over behind it, the device thread finishes a batch itself: it
    has nothing else to do, and the answer takes one thread hop less."""
    fake = StagedFake()
    batcher = make(fake, max_wait_s=0.0)
    assert await asyncio.wait_for(asyncio.gather(*submit(batcher, 1)), 5) == [10]
    stages = [(kind, name) for kind, name, _, _ in fake.calls]
    assert [kind for kind, _ in stages] == ["prepare", "run", "finish"]
    assert all(name.startswith("infer-") for _, name in stages)
    await batcher.stop()


async def test_a_batch_that_is_not_full_waits_for_the_running_pass_and_its_callers() -> None:
    """Only a full batch goes behind the running pass: one that could still fill waits for
    the pass to end (and the usual rules), so it may take the callers it answers."""
    released = threading.Event()
    fake = StagedFake(hold_run=released)
    batcher = make(fake, max_wait_s=0.0, max_batch_size=4)
    first = submit(batcher, 1)
    await wait_for(lambda: len(fake.of("run")) == 1)
    later = submit(batcher, 2, 3)
    await asyncio.sleep(0.2)
    assert len(fake.of("prepare")) == 1  # not taken while the pass runs
    released.set()
    assert await asyncio.wait_for(asyncio.gather(*first, *later), 5) == [10, 20, 30]
    assert [batch for _, batch, _ in fake.of("run")] == [[1], [2, 3]]
    await batcher.stop()


async def test_callers_answered_after_a_long_finish_still_join_the_next_batch() -> None:
    """The wait for the callers a pass answered counts from their answers, not from the
    pass's end: finishing on the host thread takes longer than that wait here, and the
    callers still ride together (see test_batcher's test of the rule)."""
    group = 4
    assert group >= REGROUP_MIN_INPUTS
    released = threading.Event()
    fake = StagedFake(hold_run=released, run_s=0.3, finish_s=0.1)
    batcher = make(fake, max_wait_s=0.05, max_batch_size=2 * group)
    assert REGROUP_PASS_SHARE * fake.run_s < fake.finish_s  # from the pass end: missed
    rounds = 3

    async def caller(first: asyncio.Future[int], payload: int, more: int) -> None:
        await first
        for _ in range(more):
            (answer,) = submit(batcher, payload)
            assert await answer == payload * 10

    first_group = submit(batcher, *range(group))
    await wait_for(lambda: len(fake.of("run")) == 1)
    second_group = submit(batcher, *range(group, 2 * group))
    callers = [caller(f, p, rounds) for p, f in enumerate(first_group)]
    callers += [caller(f, p, rounds - 1) for p, f in enumerate(second_group, start=group)]
    released.set()
    await asyncio.wait_for(asyncio.gather(*callers), 20.0)
    sizes = [len(batch) for _, batch, _ in fake.of("run")]
    assert sizes == [group] + [2 * group] * rounds
    await batcher.stop()


async def test_answers_stay_exactly_once_and_in_order_across_overlapping_batches() -> None:
    fake = StagedFake(jitter_s=0.002)
    batcher = make(fake, max_wait_s=0.001, max_batch_size=3)
    requests = []
    payload = 0
    for size in [random.Random(5).randint(1, 5) for _ in range(60)]:
        requests.append(
            (list(range(payload, payload + size)), submit(batcher, *range(payload, payload + size)))
        )
        payload += size
        if size % 2:
            await asyncio.sleep(0.001)
    for payloads, futures in requests:
        assert await asyncio.wait_for(asyncio.gather(*futures), 10) == [p * 10 for p in payloads]
    ran = sorted(p for _, batch, _ in fake.of("run") for p in batch)
    assert ran == list(range(payload))  # each input in one pass, none twice
    assert len(fake.of("finish")) == len(fake.of("run"))
    assert batcher.pending == 0
    await batcher.stop()


async def test_a_failing_finish_retries_inputs_alone_so_neighbours_succeed() -> None:
    class Flaky(StagedFake):
        def finish(self, prepared: list[int], raw: list[int]) -> list[int]:
            if 13 in prepared and len(prepared) > 1:
                raise RuntimeError("pooling failed")
            if prepared == [13]:
                raise RuntimeError("bad input")
            return super().finish(prepared, raw)

    fake = Flaky()
    batcher = make(fake, max_wait_s=0.05, max_batch_size=8)
    held = threading.Event()
    fake.hold_run = held
    first = submit(batcher, 1)
    await wait_for(lambda: len(fake.of("run")) == 1)
    rest = submit(batcher, 12, 13, 14)
    held.set()
    assert await asyncio.wait_for(asyncio.gather(*first), 5) == [10]
    results = await asyncio.wait_for(asyncio.gather(*rest, return_exceptions=True), 5)
    assert results[0] == 120 and results[2] == 140
    assert isinstance(results[1], InferenceFailed)
    await batcher.stop()


async def test_cancelled_and_expired_inputs_never_reach_a_pass_behind_a_running_one() -> None:
    released = threading.Event()
    fake = StagedFake(hold_run=released)
    batcher = make(fake, max_wait_s=0.0, max_batch_size=4)
    first = submit(batcher, 1)
    await wait_for(lambda: len(fake.of("run")) == 1)
    (cancelled,) = submit(batcher, 2)
    (expiring,) = submit(batcher, 3, timeout=0.05)
    (kept,) = submit(batcher, 4)
    cancelled.cancel()
    await asyncio.sleep(0.1)
    released.set()
    assert await asyncio.wait_for(kept, 5) == 40
    with pytest.raises(DeadlineExceeded):
        await expiring
    assert await asyncio.gather(*first) == [10]
    assert [batch for _, batch, _ in fake.of("run")] == [[1], [4]]
    await batcher.stop()


async def test_a_caller_that_leaves_a_batch_waiting_behind_the_pass_is_answered_once() -> None:
    """A full batch handed over behind the running pass is bound to its passes: a caller
    that leaves meanwhile gets its cancellation, the others their answers, and the
    batcher goes on."""
    released = threading.Event()
    fake = StagedFake(hold_run=released)
    batcher = make(fake, max_wait_s=0.0, max_batch_size=2)
    first = submit(batcher, 1)
    await wait_for(lambda: len(fake.of("run")) == 1)
    leaving, staying = submit(batcher, 2, 3)
    await wait_for(lambda: len(fake.of("prepare")) == 2)  # handed over, behind the pass
    leaving.cancel()
    released.set()
    assert await asyncio.wait_for(asyncio.gather(*first, staying), 5) == [10, 30]
    assert leaving.cancelled()
    assert await asyncio.wait_for(asyncio.gather(*submit(batcher, 5)), 5) == [50]
    await wait_for(lambda: batcher.pending == 0)
    await batcher.stop()


async def test_process_deadline_still_holds_behind_a_running_pass() -> None:
    released = threading.Event()
    fake = StagedFake(hold_run=released)
    batcher = make(fake, max_wait_s=0.0, max_batch_size=1)
    first = submit(batcher, 1)
    await wait_for(lambda: len(fake.of("run")) == 1)
    with pytest.raises(DeadlineExceeded):
        await batcher.process([(2, 10)], 0.1)  # full: handed over, but the pass is held
    released.set()
    assert await asyncio.wait_for(asyncio.gather(*first), 5) == [10]
    await wait_for(lambda: batcher.pending == 0)
    await batcher.stop()


async def test_stop_answers_the_running_and_the_waiting_batch_not_ready() -> None:
    released = threading.Event()
    fake = StagedFake(hold_run=released)
    batcher = make(fake, max_wait_s=0.0, max_batch_size=1)
    (running,) = submit(batcher, 1)
    await wait_for(lambda: len(fake.of("run")) == 1)
    (waiting,) = submit(batcher, 2)
    await wait_for(lambda: len(fake.of("prepare")) == 2)
    (queued,) = submit(batcher, 3)
    await batcher.stop()
    released.set()
    for future in (running, waiting, queued):
        with pytest.raises(NotReady):
            await future


async def test_a_batch_handed_over_behind_the_pass_counts_against_the_queue_limit() -> None:
    """Out of the queue but still waiting for a pass: admission counts it, so the limit on
    waiting inputs holds as before."""
    released = threading.Event()
    fake = StagedFake(hold_run=released)
    batcher = make(fake, max_wait_s=0.0, max_batch_size=1, max_queue=1)
    first = submit(batcher, 1)
    await wait_for(lambda: len(fake.of("run")) == 1)
    waiting = submit(batcher, 2)  # full: handed over behind the running pass
    await wait_for(lambda: len(fake.of("prepare")) == 2)
    assert batcher.queued == 1  # not in the queue, but waiting for a pass all the same
    with pytest.raises(Overloaded):
        submit(batcher, 3)
    released.set()
    assert await asyncio.wait_for(asyncio.gather(*first, *waiting), 5) == [10, 20]
    await batcher.stop()


async def test_a_low_priority_batch_never_goes_behind_a_running_pass() -> None:
    """A low-priority batch counts as full at its small cap, but is not handed over early:
    a normal input that comes while the pass runs still goes first."""
    released = threading.Event()
    fake = StagedFake(hold_run=released)
    batcher = make(fake, max_wait_s=0.0, max_batch_size=64)
    first = submit(batcher, 1)
    await wait_for(lambda: len(fake.of("run")) == 1)
    low = batcher.submit([(p, 10) for p in (7, 8, 9)], 30.0, low=True)
    await asyncio.sleep(0.2)
    assert len(fake.of("prepare")) == 1  # not taken while the pass runs
    normal = submit(batcher, 2)
    released.set()
    assert await asyncio.wait_for(asyncio.gather(*first, *normal, *low), 5) == [10, 20, 70, 80, 90]
    assert [batch for _, batch, _ in fake.of("run")][1] == [2]
    await batcher.stop()
