"""The batcher with a fake backend: flush rules, drops, rejection, ordering, exactly-once."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.engine.batching.batcher import RESTART_DELAY_S, BatchLimits, DynamicBatcher
from app.engine.batching.scheduling import REGROUP_MIN_INPUTS, REGROUP_PASS_SHARE
from app.engine.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded
from app.engine.timing import RequestTiming, current_timing
from app.metrics import Metrics

POISON = -1


@dataclass
class FakeBackend:
    """Answers payload n with n * 10; can hold a batch until released, or raise on POISON."""

    batches: list[list[int]] = field(default_factory=list)
    started: list[float] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    hold_first: bool = False
    pass_s: float = 0.0  # how long each batch takes

    def __post_init__(self) -> None:
        if not self.hold_first:
            self.gate.set()

    def __call__(self, payloads: list[int]) -> list[int]:
        self.batches.append(list(payloads))
        self.started.append(time.monotonic())
        assert self.gate.wait(10), "test never released the gate"
        time.sleep(self.pass_s)
        if POISON in payloads:
            raise RuntimeError("poisoned input")
        return [payload * 10 for payload in payloads]


async def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def make(backend: FakeBackend, metrics: Metrics | None = None, **limits) -> DynamicBatcher:
    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        "fake", backend, BatchLimits(**limits), metrics
    )
    batcher.start()
    return batcher


def submit(batcher: DynamicBatcher, *payloads: int, tokens: int = 10, timeout: float = 30.0):
    return batcher.submit([(p, tokens) for p in payloads], timeout)


async def test_idle_batcher_dispatches_at_once() -> None:
    backend = FakeBackend()
    batcher = make(backend, max_wait_s=30.0)
    (future,) = submit(batcher, 7)
    # Far sooner than max_wait: an idle batcher does not wait for company.
    assert await asyncio.wait_for(future, 5.0) == 70
    assert backend.batches == [[7]]
    await batcher.stop()


async def test_busy_batcher_flushes_after_max_wait_from_oldest() -> None:
    backend = FakeBackend(hold_first=True)
    batcher = make(backend, max_wait_s=0.3, max_batch_size=64)
    first = submit(batcher, 1)
    await wait_for(lambda: len(backend.batches) == 1)
    queued_at = time.monotonic()
    later = submit(batcher, 2, 3)
    backend.gate.set()
    assert await asyncio.gather(*first, *later) == [10, 20, 30]
    assert backend.batches == [[1], [2, 3]]
    # Not full, so the second batch waited until its oldest input had waited max_wait.
    assert backend.started[1] - queued_at >= 0.3 - 0.01
    await batcher.stop()


async def test_callers_answered_by_a_pass_join_the_next_batch() -> None:
    """Closed-loop callers that began in two groups, with passes longer than max_wait (as
    on a CPU): after the first pass, the callers it answered come back before the next
    batch leaves, and from then on all ride together. Counting the wait from the oldest
    input alone, the queued group would leave at once, and the two would alternate."""
    group = 4
    assert group >= REGROUP_MIN_INPUTS
    backend = FakeBackend(hold_first=True, pass_s=0.3)
    batcher = make(backend, max_wait_s=0.05, max_batch_size=2 * group)
    rounds = 4

    async def caller(first: asyncio.Future[int], payload: int, more: int) -> None:
        await first
        for _ in range(more):
            (answer,) = submit(batcher, payload)
            assert await answer == payload * 10

    first_group = submit(batcher, *range(group))
    await wait_for(lambda: len(backend.batches) == 1)
    second_group = submit(batcher, *range(group, 2 * group))
    callers = [caller(f, p, rounds) for p, f in enumerate(first_group)]
    callers += [caller(f, p, rounds - 1) for p, f in enumerate(second_group, start=group)]
    backend.gate.set()
    await asyncio.wait_for(asyncio.gather(*callers), 10.0)
    assert [len(batch) for batch in backend.batches] == [group] + [2 * group] * rounds
    await batcher.stop()


@pytest.mark.parametrize("first_pass", [REGROUP_MIN_INPUTS - 1, REGROUP_MIN_INPUTS])
async def test_after_a_pass_of_several_inputs_the_batch_waits_for_callers(
    first_pass: int,
) -> None:
    """The queued input has waited out max_wait while the pass ran: after a pass of few
    inputs it leaves at once; after one of several it waits a share of the pass."""
    max_wait, held = 0.5, 2.0
    backend = FakeBackend(hold_first=True)
    batcher = make(backend, max_wait_s=max_wait, max_batch_size=64)
    first = submit(batcher, *range(first_pass))
    await wait_for(lambda: len(backend.batches) == 1)
    (later,) = submit(batcher, 99)
    await asyncio.sleep(held)
    released = time.monotonic()
    backend.gate.set()
    await asyncio.wait_for(asyncio.gather(*first, later), 10.0)
    waited = backend.started[1] - released
    regroup_s = min(max_wait, REGROUP_PASS_SHARE * held)  # the pass took `held` and more
    if first_pass < REGROUP_MIN_INPUTS:
        assert waited < regroup_s * 0.75
    else:  # and not the whole max_wait: a share of the pass at most
        assert regroup_s - 0.01 <= waited < max_wait - 0.1
    await batcher.stop()


async def test_full_batch_dispatches_without_waiting() -> None:
    backend = FakeBackend(hold_first=True)
    batcher = make(backend, max_wait_s=2.0, max_batch_size=4)
    first = submit(batcher, 1)
    await wait_for(lambda: len(backend.batches) == 1)
    queued = time.monotonic()  # before: the inputs' wait counts from their enqueue time
    rest = submit(batcher, *range(2, 8))
    released = time.monotonic()
    backend.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*first, *rest), 10.0)
    assert results == [n * 10 for n in range(1, 8)]
    assert [len(batch) for batch in backend.batches] == [1, 4, 2]
    # The full batch went at once; only the partial one waited out max_wait.
    assert backend.started[1] - released < 1.0
    assert backend.started[2] - queued >= 2.0 - 0.01
    await batcher.stop()


async def test_token_budget_limits_padded_tokens_per_batch() -> None:
    backend = FakeBackend(hold_first=True)
    batcher = make(backend, max_wait_s=0.05, max_batch_size=64, max_batch_tokens=100)
    first = submit(batcher, 0)
    await wait_for(lambda: len(backend.batches) == 1)
    # 30-token inputs: 3 fit in 100 padded tokens, a 4th would make 120.
    rest = submit(batcher, *range(1, 8), tokens=30)
    backend.gate.set()
    await asyncio.gather(*first, *rest)
    assert [len(batch) for batch in backend.batches] == [1, 3, 3, 1]
    await batcher.stop()


async def test_batch_is_sorted_by_length_and_answers_keep_their_inputs() -> None:
    backend = FakeBackend(hold_first=True)
    batcher = make(backend, max_wait_s=0.01)
    first = submit(batcher, 0)
    await wait_for(lambda: len(backend.batches) == 1)
    lengths = {1: 50, 2: 5, 3: 30, 4: 12}
    futures = batcher.submit([(p, n) for p, n in lengths.items()], 30.0)
    backend.gate.set()
    await asyncio.gather(*first)
    assert await asyncio.gather(*futures) == [10, 20, 30, 40]
    assert backend.batches[1] == sorted(lengths, key=lengths.__getitem__)
    await batcher.stop()


async def test_cancelled_and_expired_inputs_never_reach_the_backend() -> None:
    backend = FakeBackend(hold_first=True)
    metrics = Metrics()
    batcher = make(backend, metrics, max_wait_s=0.0)
    first = submit(batcher, 1)
    await wait_for(lambda: len(backend.batches) == 1)
    (cancelled,) = submit(batcher, 2)
    (expiring,) = submit(batcher, 3, timeout=0.05)
    (kept,) = submit(batcher, 4)
    cancelled.cancel()
    await asyncio.sleep(0.1)
    backend.gate.set()
    assert await kept == 40
    with pytest.raises(DeadlineExceeded):
        await expiring
    await asyncio.gather(*first)
    assert backend.batches == [[1], [4]]
    sample = metrics.registry.get_sample_value
    assert sample("encoder_rejected_total", {"model": "fake", "reason": "cancelled"}) == 1
    assert sample("encoder_rejected_total", {"model": "fake", "reason": "deadline"}) == 1
    await batcher.stop()


async def test_full_queue_rejects_whole_request_and_counts_it() -> None:
    backend = FakeBackend(hold_first=True)
    metrics = Metrics()
    batcher = make(backend, metrics, max_queue=3)
    first = submit(batcher, 1)
    await wait_for(lambda: len(backend.batches) == 1)
    queued = submit(batcher, 2, 3)
    with pytest.raises(Overloaded):
        submit(batcher, 4, 5)  # 2 + 2 > 3: all or nothing
    assert (
        metrics.registry.get_sample_value(
            "encoder_rejected_total", {"model": "fake", "reason": "queue_full"}
        )
        == 2
    )
    assert metrics.registry.get_sample_value("encoder_queue_depth", {"model": "fake"}) == 2
    backend.gate.set()
    assert await asyncio.gather(*first, *queued) == [10, 20, 30]
    await batcher.stop()


async def test_failing_batch_retries_inputs_alone_so_neighbours_succeed() -> None:
    backend = FakeBackend(hold_first=True)
    batcher = make(backend, max_wait_s=0.0)
    first = submit(batcher, 1)
    await wait_for(lambda: len(backend.batches) == 1)
    futures = submit(batcher, 2, POISON, 3)
    backend.gate.set()
    outcomes = await asyncio.gather(*first, *futures, return_exceptions=True)
    assert outcomes[:2] == [10, 20] and outcomes[3] == 30
    assert isinstance(outcomes[2], InferenceFailed)
    # The batcher keeps serving after the failure.
    assert await asyncio.gather(*submit(batcher, 5)) == [50]
    await batcher.stop()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    requests=st.lists(
        st.tuples(
            st.integers(1, 6),  # inputs in the request
            st.integers(1, 60),  # tokens each
            st.booleans(),  # the client goes away right after submitting
            st.floats(0, 0.003),  # delay before submitting
        ),
        min_size=1,
        max_size=25,
    ),
    max_batch_size=st.integers(1, 8),
    max_batch_tokens=st.integers(60, 300),
    poison=st.integers(0, 6),
    instances=st.integers(1, 3),
)
def test_every_input_gets_exactly_one_outcome_never_crossed(
    requests, max_batch_size, max_batch_tokens, poison, instances
) -> None:
    def poisoned(payload: int) -> bool:
        return poison > 0 and payload % 7 == poison

    async def scenario() -> None:
        calls: list[list[int]] = []

        def backend(payloads: list[int]) -> list[int]:
            calls.append(list(payloads))
            time.sleep(0.0005)
            if any(map(poisoned, payloads)):
                raise RuntimeError("flaky backend")
            return [p * 10 for p in payloads]

        batcher: DynamicBatcher[int, int] = DynamicBatcher(
            "prop",
            [backend] * instances,  # several instances share the queue
            BatchLimits(max_batch_size, max_batch_tokens, max_wait_s=0.001, max_queue=10_000),
        )
        batcher.start()
        submitted: list[tuple[int, asyncio.Future[int], bool]] = []
        next_payload = 0
        for count, tokens, leaves, delay in requests:
            await asyncio.sleep(delay)
            payloads = list(range(next_payload, next_payload + count))
            next_payload += count
            futures = batcher.submit([(p, tokens) for p in payloads], 30.0)
            if leaves:
                for future in futures:
                    future.cancel()
            submitted.extend((p, f, leaves) for p, f in zip(payloads, futures, strict=True))
        await asyncio.wait_for(
            asyncio.gather(*(f for _, f, _ in submitted), return_exceptions=True), 30.0
        )
        ran = [p for batch in calls for p in batch]
        for payload, future, left in submitted:
            assert future.done()
            if left:
                assert future.cancelled() and payload not in ran
            elif poisoned(payload):
                assert isinstance(future.exception(), InferenceFailed)
            else:
                assert future.result() == payload * 10  # its own answer, nobody else's
                assert 1 <= ran.count(payload) <= 2  # its batch, plus one retry alone
        assert all(len(batch) <= max_batch_size for batch in calls)
        assert batcher.pending == 0
        await batcher.stop()

    asyncio.run(scenario())


async def test_a_worker_that_dies_answers_its_batch_and_is_restarted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = FakeBackend()
    batcher = make(backend, max_wait_s=0.0)
    original = batcher._execute
    calls = 0

    async def crash_once(batch, instance):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug in the worker")
        await original(batch, instance)

    monkeypatch.setattr(batcher, "_execute", crash_once)
    (lost,) = submit(batcher, 1)
    with pytest.raises(InferenceFailed):
        await asyncio.wait_for(lost, 5)  # answered, not left hanging
    await wait_for(lambda: not batcher.alive)
    await wait_for(lambda: batcher.alive)  # restarted
    assert batcher.restarts == 1
    assert await asyncio.wait_for(asyncio.gather(*submit(batcher, 2)), 5) == [20]
    await batcher.stop()


async def test_token_bound_rejects_when_queued_tokens_would_overflow() -> None:
    backend = FakeBackend(hold_first=True)
    batcher = make(backend, max_queue=100, max_queue_tokens=50)
    first = submit(batcher, 1)
    await wait_for(lambda: len(backend.batches) == 1)
    queued = submit(batcher, 2, tokens=40)
    with pytest.raises(Overloaded, match="tokens"):
        submit(batcher, 3, tokens=20)
    backend.gate.set()
    await asyncio.gather(*first, *queued)
    # Into an empty queue, even a request over the bound alone is taken.
    assert await asyncio.gather(*submit(batcher, 4, tokens=80)) == [40]
    await batcher.stop()


async def test_drain_waits_for_queued_and_running_inputs() -> None:
    backend = FakeBackend(hold_first=True)
    batcher = make(backend)
    futures = submit(batcher, 1, 2, 3)
    assert not await batcher.drain(0.05)  # still held
    backend.gate.set()
    assert await batcher.drain(5)
    assert all(future.done() for future in futures) and batcher.pending == 0
    await batcher.stop()


async def test_drain_returns_once_the_held_batch_finishes() -> None:
    backend = FakeBackend(hold_first=True)
    batcher = make(backend)
    futures = submit(batcher, 1, 2)
    await wait_for(lambda: len(backend.batches) == 1)
    draining = asyncio.ensure_future(batcher.drain(30))
    await asyncio.sleep(0.05)
    assert not draining.done()  # the batch is still held
    backend.gate.set()
    assert await asyncio.wait_for(draining, 10)
    assert [future.result() for future in futures] == [10, 20]
    assert batcher.pending == 0
    assert await batcher.drain(0)  # already drained: no wait needed
    await batcher.stop()


async def test_drain_times_out_while_a_batch_is_held() -> None:
    backend = FakeBackend(hold_first=True)
    batcher = make(backend)
    futures = submit(batcher, 1)
    await wait_for(lambda: len(backend.batches) == 1)
    assert await batcher.drain(0.1) is False
    assert batcher.pending == 1
    backend.gate.set()
    assert await asyncio.gather(*futures) == [10]
    await batcher.stop()


async def test_process_answers_in_order() -> None:
    backend = FakeBackend()
    batcher = make(backend, max_wait_s=0.0)
    lengths = {1: 40, 2: 5, 3: 20}  # the batch runs sorted by length, answers come back in order
    assert await batcher.process(list(lengths.items()), 30.0) == [10, 20, 30]
    assert backend.batches == [[2, 3, 1]]
    await batcher.stop()


async def test_process_timeout_raises_and_leaves_nothing_queued() -> None:
    backend = FakeBackend(hold_first=True)
    metrics = Metrics()
    batcher = make(backend, metrics)
    first = submit(batcher, 1)
    await wait_for(lambda: len(backend.batches) == 1)
    with pytest.raises(DeadlineExceeded):
        await batcher.process([(2, 10), (3, 10)], 0.05)
    backend.gate.set()
    assert await asyncio.gather(*first) == [10]
    await wait_for(lambda: batcher.pending == 0)
    assert backend.batches == [[1]]  # the timed-out inputs never ran
    sample = metrics.registry.get_sample_value
    assert sample("encoder_rejected_total", {"model": "fake", "reason": "deadline"}) == 2
    await batcher.stop()


async def test_cancelled_process_drops_its_inputs_before_the_forward_pass() -> None:
    backend = FakeBackend(hold_first=True)
    metrics = Metrics()
    batcher = make(backend, metrics, max_wait_s=0.0)
    first = submit(batcher, 1)
    await wait_for(lambda: len(backend.batches) == 1)
    task = asyncio.ensure_future(batcher.process([(2, 10), (3, 10)], 30.0))
    await wait_for(lambda: batcher.pending == 3)  # the held input and the two queued
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    backend.gate.set()
    assert await asyncio.gather(*first) == [10]
    assert await batcher.drain(10)  # the worker emptied the queue by dropping them
    assert batcher.pending == 0
    assert backend.batches == [[1]]
    assert metrics.rejected.labels("fake", "cancelled")._value.get() == 2
    await batcher.stop()


async def test_process_records_its_timing_in_the_current_request() -> None:
    backend = FakeBackend(hold_first=True)
    batcher = make(backend, max_wait_s=0.0)
    first = submit(batcher, 1)
    await wait_for(lambda: len(backend.batches) == 1)

    async def request() -> tuple[list[int], RequestTiming]:
        timing = RequestTiming()
        current_timing.set(timing)  # this task's context only, as the HTTP edge does
        return await batcher.process([(2, 7), (3, 5)], 30.0), timing

    task = asyncio.ensure_future(request())
    await wait_for(lambda: batcher.pending == 3)
    backend.gate.set()  # also lets the second batch through: the gate stays open
    results, timing = await asyncio.wait_for(task, 10)
    assert results == [20, 30]
    assert timing.queue_s > 0  # it queued behind the held batch
    assert timing.inference_s > 0
    assert (timing.inputs, timing.tokens) == (2, 12)
    assert current_timing.get() is None  # not leaked into the test's own context
    await asyncio.gather(*first)
    await batcher.stop()


async def test_stop_cancels_a_pending_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = FakeBackend()
    batcher = make(backend, max_wait_s=0.0)
    original = batcher._take_batch
    calls = 0

    def crash_once():
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug in the worker")
        return original()

    monkeypatch.setattr(batcher, "_take_batch", crash_once)
    (queued,) = submit(batcher, 1)
    await wait_for(lambda: not batcher.alive)
    assert batcher.restarts == 1
    assert batcher.pending == 1  # nobody takes it off the queue now
    await batcher.stop()  # within RESTART_DELAY_S of the crash
    assert await batcher.drain(0)  # stop emptied the queue
    await asyncio.sleep(RESTART_DELAY_S * 2)
    assert not batcher.alive
    assert batcher.restarts == 1
    assert calls == 1  # no worker ran again
    assert queued.done() and not queued.cancelled()  # failed by stop, not left hanging
    assert backend.batches == []


async def test_a_small_request_rides_the_next_pass_past_large_ones() -> None:
    backend = FakeBackend(hold_first=True)
    batcher = make(backend, max_batch_size=8, max_queue=1000)
    first = submit(batcher, 0)
    await wait_for(lambda: len(backend.batches) == 1)
    large = [submit(batcher, *range(100 * r, 100 * r + 50)) for r in (1, 2, 3, 4)]
    (small,) = submit(batcher, 7)  # arrives behind 200 queued inputs
    backend.gate.set()
    assert await small == 70
    # The pass after the held one takes a turn of each request: the small one included.
    assert 7 in backend.batches[1]
    assert sorted(backend.batches[1]) == [7, 100, 101, 200, 201, 300, 301, 400]
    await asyncio.gather(*first, *(f for futures in large for f in futures))
    await batcher.stop()


async def test_work_that_cannot_finish_before_its_deadline_is_refused_at_once() -> None:
    metrics = Metrics()

    def slow(payloads: list[int]) -> list[int]:
        time.sleep(0.05)  # 0.05 s for a pass of 10-token inputs
        return [p * 10 for p in payloads]

    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        "fake", slow, BatchLimits(max_batch_size=4), metrics
    )
    batcher.start()
    assert await asyncio.gather(*submit(batcher, 1, 2, 3, 4)) == [10, 20, 30, 40]
    # An idle model admits anything: nothing is ahead of it.
    assert await asyncio.gather(*submit(batcher, 5, timeout=0.01)) == [50]
    busy = submit(batcher, *range(10, 50))  # 40 inputs: about 0.5 s of passes
    with pytest.raises(Overloaded) as refused:
        # 40 more: round-robin finishes them only after about 1 s of passes.
        submit(batcher, *range(100, 140), timeout=0.2)
    assert "deadline" in str(refused.value) and refused.value.retry_after_s >= 1
    # One input with the same deadline is admitted: its turn comes in the next pass.
    assert await asyncio.gather(*submit(batcher, 98, timeout=0.2)) == [980]
    sample = metrics.registry.get_sample_value
    reason = {"model": "fake", "reason": "would_miss_deadline"}
    assert sample("encoder_rejected_total", reason) == 40
    await asyncio.gather(*busy)
    await batcher.stop()


async def test_instances_run_batches_side_by_side_each_answer_once() -> None:
    both_running = threading.Barrier(2, timeout=10)
    ran: list[tuple[int, list[int]]] = []

    def instance(index: int):
        def run(payloads: list[int]) -> list[int]:
            ran.append((index, list(payloads)))
            if len(ran) <= 2:
                both_running.wait()  # the first two batches must run at the same time
            return [p * 10 for p in payloads]

        return run

    metrics = Metrics()
    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        "fake", [instance(0), instance(1)], BatchLimits(max_batch_size=2), metrics
    )
    batcher.start()
    assert batcher.instances == 2
    futures = [submit(batcher, 2 * n, 2 * n + 1) for n in range(6)]
    results = await asyncio.gather(*(f for pair in futures for f in pair))
    assert results == [p * 10 for p in range(12)]
    assert sorted(p for _, batch in ran for p in batch) == list(range(12))  # exactly once
    assert {index for index, _ in ran} == {0, 1}
    per_instance = [
        metrics.registry.get_sample_value(
            "encoder_instance_batches_total", {"model": "fake", "instance": str(index)}
        )
        for index in (0, 1)
    ]
    assert sum(per_instance) == len(ran) and all(per_instance)
    assert metrics.registry.get_sample_value("encoder_instances_busy", {"model": "fake"}) == 0
    await batcher.stop()


async def test_a_request_with_no_time_left_is_a_deadline_not_overloaded() -> None:
    batcher = make(FakeBackend())
    with pytest.raises(DeadlineExceeded):
        await batcher.process([(1, 10)], 0.0)  # its time went to tokenizing, say
    await batcher.stop()


async def test_inputs_in_the_running_batch_at_shutdown_are_not_ready() -> None:
    backend = FakeBackend(hold_first=True)
    batcher = make(backend)
    (running,) = submit(batcher, 1)
    await wait_for(lambda: len(backend.batches) == 1)
    await batcher.stop()
    backend.gate.set()
    with pytest.raises(NotReady):
        await running


async def test_low_priority_inputs_wait_for_normal_ones_and_ride_alone() -> None:
    from app.engine.batching import scheduling as batching

    backend = FakeBackend(hold_first=True)
    batcher = make(backend, max_wait_s=0.0, max_batch_size=64)
    first = submit(batcher, 0)  # holds the worker while the rest queue
    await wait_for(lambda: len(backend.batches) == 1)
    low = batcher.submit([(n, 10) for n in range(100, 110)], 30.0, low=True)
    normal = submit(batcher, 1, 2, 3)
    backend.gate.set()
    assert await asyncio.gather(*first, *normal, *low) == [0, 10, 20, 30] + [
        n * 10 for n in range(100, 110)
    ]
    # The normal request went first, in a batch without low inputs; low batches were small
    # while a normal input had arrived within LOW_PRIORITY_QUIET_S.
    assert backend.batches[1] == [1, 2, 3]
    low_batches = backend.batches[2:]
    assert all(n >= 100 for batch in low_batches for n in batch)
    assert max(map(len, low_batches)) <= batching.LOW_PRIORITY_BATCH
    assert len(low_batches[0]) == batching.LOW_PRIORITY_BUSY_BATCH
    await batcher.stop()


async def test_low_priority_batches_grow_after_a_quiet_spell() -> None:
    from app.engine.batching import scheduling as batching

    backend = FakeBackend(hold_first=True)
    batcher = make(backend, max_wait_s=0.0, max_batch_size=64)
    first = batcher.submit([(0, 10)], 30.0, low=True)
    await wait_for(lambda: len(backend.batches) == 1)
    low = batcher.submit([(n, 10) for n in range(1, 20)], 30.0, low=True)
    backend.gate.set()
    await asyncio.gather(*first, *low)
    assert [len(batch) for batch in backend.batches[1:]] == [batching.LOW_PRIORITY_BATCH] * 2 + [3]
    await batcher.stop()


async def test_low_priority_requests_may_fill_only_half_the_queue() -> None:
    backend = FakeBackend(hold_first=True)
    batcher = make(backend, max_queue=10)
    first = submit(batcher, 0)
    await wait_for(lambda: len(backend.batches) == 1)
    low = batcher.submit([(n, 10) for n in range(4)], 30.0, low=True)
    with pytest.raises(Overloaded, match="low priority"):
        batcher.submit([(n, 10) for n in range(2)], 30.0, low=True)
    low += batcher.submit([(4, 10)], 30.0, low=True)
    normal = submit(batcher, *range(5))  # the other half is still free for normal requests
    backend.gate.set()
    await asyncio.gather(*first, *low, *normal)
    await batcher.stop()


async def test_a_low_priority_request_over_half_the_queue_is_taken_alone() -> None:
    # An explanation comes whole; it may exceed the low half while no other low input
    # waits, and normal requests still find their half.
    backend = FakeBackend(hold_first=True)
    batcher = make(backend, max_queue=10)
    first = submit(batcher, 0)
    await wait_for(lambda: len(backend.batches) == 1)
    low = batcher.submit([(n, 10) for n in range(8)], 30.0, low=True)
    with pytest.raises(Overloaded, match="low priority"):
        batcher.submit([(9, 10)], 30.0, low=True)
    normal = submit(batcher, *range(5))
    with pytest.raises(Overloaded):
        submit(batcher, 6, 7, 8, 9, 10, 11)  # over the normal limit with low counted at half
    backend.gate.set()
    await asyncio.gather(*first, *low, *normal)
    await batcher.stop()


async def test_low_priority_work_is_priced_at_the_throughput_it_gets() -> None:
    # Interactive traffic is around and low passes were seen to run 100 tokens/s: a low
    # request of 2,000 tokens cannot finish in 5 s and is refused at once, though the
    # passes themselves (1,000 tokens/s) would run it in 2 s; a normal one is not.
    backend = FakeBackend(hold_first=True)
    metrics = Metrics()
    batcher = make(backend, max_queue=1000, metrics=metrics)
    first = submit(batcher, 0)
    await wait_for(lambda: len(backend.batches) == 1)
    batcher._pass_seconds, batcher._pass_tokens = 1.0, 1000.0
    batcher._low_done_seconds, batcher._low_done_tokens = 10.0, 1000.0
    batcher._last_normal_at = time.monotonic()
    with pytest.raises(Overloaded, match="low priority") as refused:
        batcher.submit([(n, 20) for n in range(100)], 5.0, low=True)
    assert refused.value.retry_after_s >= 1
    rejected = metrics.rejected.labels("fake", "low_would_miss_deadline")
    assert rejected._value.get() == 100
    low = batcher.submit([(n, 20) for n in range(10)], 5.0, low=True)  # 2 s: taken
    normal = batcher.submit([(n, 20) for n in range(100)], 5.0)
    backend.gate.set()
    await asyncio.gather(*first, *normal, *low)
    await batcher.stop()


async def test_process_passes_priority_through() -> None:
    backend = FakeBackend()
    batcher = make(backend)
    assert await batcher.process([(4, 10), (5, 10)], 5.0, low=True) == [40, 50]
    await batcher.stop()


async def test_low_priority_passes_keep_to_their_share_while_normal_inputs_come() -> None:
    from app.engine.batching import scheduling as batching

    backend = FakeBackend()
    batcher = make(backend, max_wait_s=0.0, max_batch_size=64)
    # Recent passes were all low priority, and a normal input has just arrived.
    batcher._low_seconds = batcher._all_seconds = 1.0
    await batcher.process([(0, 10)], 5.0)
    batcher._low_seconds = batcher._all_seconds = 1.0
    started = time.monotonic()
    low = batcher.submit([(1, 10)], 5.0, low=True)
    assert await asyncio.gather(*low) == [10]
    # Held back until interactive traffic had been quiet for LOW_PRIORITY_QUIET_S.
    assert time.monotonic() - started >= batching.LOW_PRIORITY_QUIET_S * 0.5
    await batcher.stop()


def test_the_readme_states_the_regrouping_threshold() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"After a pass that answered {REGROUP_MIN_INPUTS} or more inputs" in readme
    assert f"after a pass of {REGROUP_MIN_INPUTS} or more inputs" in readme
    assert REGROUP_PASS_SHARE == 0.1 and "at most a tenth of the pass" in readme
