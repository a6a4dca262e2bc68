"""A batcher's state and bookkeeping: its limits, instances, the queue, what runs, metrics.

`DynamicBatcher` (app/engine/batching/batcher.py) is built in layers, one job each, every
layer using the ones below: this core; admission (app/engine/batching/admission.py:
refusing what cannot be answered in time, pricing work from recent passes); scheduling
(app/engine/batching/scheduling.py: when a batch goes and which inputs ride in it); and
the batcher itself (its workers: start, restart, stop, and running batches guarded).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from app.engine.batching.fair_queue import FairQueue
from app.metrics import Metrics

Payload = TypeVar("Payload")
Result = TypeVar("Result")

# Why an input never reached a forward pass (the `reason` label of encoder_rejected_total):
# `would_miss_deadline` is admission refusing work that could not finish in time.
# `low_would_miss_deadline`: the same for low-priority work (an explanation, priced whole).
REJECT_REASONS = (
    "queue_full",
    "would_miss_deadline",
    "low_would_miss_deadline",
    "cancelled",
    "deadline",
)

# Runs one batch in the worker thread; returns one result per payload, in order.
BatchFunction = Callable[[list[Payload]], Sequence[Result]]


@dataclass(frozen=True)
class Stages(Generic[Payload, Result]):
    """A batch function in three steps, so that the device thread runs only `run`.

    `prepare` (collate, pad or pack the batch's passes) and `finish` (pool, split into
    one result per payload, in order) run on the instance's host thread: the next batch
    is prepared and the last one finished while the device runs a pass. A plain
    `BatchFunction` is all `run` (`staged`).
    """

    prepare: Callable[[list[Payload]], Any]
    run: Callable[[Any], Any]
    finish: Callable[[Any, Any], Sequence[Result]]

    def __call__(self, payloads: list[Payload]) -> Sequence[Result]:
        """The whole batch in the calling thread (a retry input by input)."""
        prepared = self.prepare(payloads)
        return self.finish(prepared, self.run(prepared))


def _as_results(_: object, results: Any) -> Any:
    return results


def staged(
    function: BatchFunction[Payload, Result] | Stages[Payload, Result],
) -> Stages[Payload, Result]:
    """`function` as `Stages`: a plain batch function runs whole on the device thread."""
    if isinstance(function, Stages):
        return function
    return Stages(list, function, _as_results)


# A model instance's runner: a plain batch function, or one in stages.
Runner = BatchFunction[Payload, Result] | Stages[Payload, Result]


@dataclass(frozen=True)
class BatchLimits:
    """How large a batch may grow and how long inputs may wait for one."""

    max_batch_size: int = 64
    max_batch_tokens: int = 16384
    max_wait_s: float = 0.002
    max_queue: int = 1024  # inputs waiting
    max_queue_tokens: int = 262144  # their tokens: long inputs fill the queue sooner


@dataclass(eq=False)
class Flight(Generic[Payload, Result]):
    """A batch handed to an instance, from then until its inputs are answered."""

    batch: list[QueuedInput[Payload, Result]]
    tokens: int
    low: bool
    ended: bool = False  # its forward passes are over (it is being finished and answered)
    seconds: float = 0.0  # and took this long
    answered_at: float | None = None  # its inputs were answered then


@dataclass(eq=False)
class Instance(Generic[Payload, Result]):
    """One model instance: its batch function in stages, the device thread its passes run
    in (`executor`, one batch after the other, in the order handed over), the host thread
    that prepares and finishes batches beside it, and its worker task."""

    index: int
    stages: Stages[Payload, Result]
    executor: ThreadPoolExecutor
    host: ThreadPoolExecutor
    worker: asyncio.Task[None] | None = None
    restart: asyncio.TimerHandle | None = None  # a crashed worker's pending restart
    busy: bool = False
    flights: list[Flight[Payload, Result]] = field(default_factory=list)  # not answered yet
    # The batch whose passes ended last (the next batch may wait for its callers).
    last_ended: Flight[Payload, Result] | None = None

    @property
    def on_device(self) -> int:
        """Batches handed to the device thread whose passes have not ended."""
        return sum(not flight.ended for flight in self.flights)


@dataclass(eq=False)
class QueuedInput(Generic[Payload, Result]):
    """One input waiting for a forward pass, and the future its caller awaits."""

    payload: Payload
    tokens: int
    deadline: float
    future: asyncio.Future[Result]
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # its forward pass began
    finished_at: float | None = None  # its forward pass ended
    low: bool = False  # queued at low priority


def fail(items: Sequence[QueuedInput[Any, Any]], error: Exception) -> None:
    """Answer every input not answered yet with `error`."""
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)


def waited(items: Sequence[QueuedInput[Any, Any]]) -> tuple[float, float]:
    """The longest queue wait and the longest forward pass of answered inputs, in seconds:
    what a request of them experienced (it waits for its slowest input)."""
    queue_s = inference_s = 0.0
    for item in items:
        if item.started_at is not None and item.finished_at is not None:
            queue_s = max(queue_s, item.started_at - item.enqueued_at)
            inference_s = max(inference_s, item.finished_at - item.started_at)
    return queue_s, inference_s


class BatcherCore(Generic[Payload, Result]):
    """Queues inputs of one model for its instances; counts what is queued and running."""

    def __init__(
        self,
        name: str,
        run_batch: Runner[Payload, Result] | Sequence[Runner[Payload, Result]],
        limits: BatchLimits,
        metrics: Metrics | None = None,
        gate: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> None:
        """`run_batch`: one runner, or one per model instance (each its own session); a
        runner is a batch function, or `Stages` whose device step alone runs in the device
        thread.
        `gate`: entered around each batch in its thread (a model's pass gate); the time
        waiting there is not counted as the batch's."""
        self.name = name
        self.limits = limits
        self._metrics = metrics
        self._gate = gate
        runners = [run_batch] if callable(run_batch) else list(run_batch)
        self._instances = [
            Instance(
                index,
                staged(runner),
                ThreadPoolExecutor(1, f"infer-{name}-{index}"),
                ThreadPoolExecutor(1, f"host-{name}-{index}"),
            )
            for index, runner in enumerate(runners)
        ]
        self._queue: FairQueue[QueuedInput[Payload, Result]] = FairQueue()
        self._arrived = asyncio.Event()
        # Set while nothing is queued or running, for `drain`. An Event binds to the loop on
        # first use, so the batcher may be built outside it (at start-up, in a worker thread).
        self._idle = asyncio.Event()
        self._idle.set()
        self._running = 0  # inputs in the forward pass now
        self._running_tokens = 0  # and their tokens
        self.restarts = 0
        # What admission prices work with (app/engine/batching/admission.py) and scheduling
        # shares low-priority passes by. Smoothed seconds and tokens of recent passes:
        # their ratio prices queued work.
        self._pass_seconds = 0.0
        self._pass_tokens = 0.0
        self._last_normal_at = -math.inf  # when a normal-priority input last arrived
        self._low_seconds = 0.0  # recent pass time: low-priority passes', and all passes'
        self._all_seconds = 0.0
        # Observed low-priority throughput (admission): tokens of recent low passes, the
        # wall time low work waited for them, and since when the current wait runs (None
        # while no low-priority input is queued or running).
        self._low_done_tokens = 0.0
        self._low_done_seconds = 0.0
        self._low_pass_tokens = 0.0  # and the tokens and seconds of those passes alone
        self._low_pass_seconds = 0.0
        self._low_since: float | None = None
        self._low_running = 0  # low-priority inputs in the forward pass now
        if metrics is not None:  # series exist from the start, so rates and alerts see zeros
            for reason in REJECT_REASONS:
                metrics.rejected.labels(name, reason)
            metrics.queue_depth.labels(name).set(0)
            metrics.instances_busy.labels(name).set(0)
            for instance in self._instances:
                metrics.instance_batches.labels(name, str(instance.index))

    # -- state ------------------------------------------------------------

    @property
    def instances(self) -> int:
        return len(self._instances)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every queued and running input is answered; False on timeout."""
        try:
            # Unlike wait_for, a timeout of 0 still reports an already drained batcher.
            async with asyncio.timeout(max(timeout_s, 0.0)):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    @property
    def queued(self) -> int:
        """Inputs waiting for a forward pass: queued, or in a batch handed over behind a
        running pass."""
        return len(self._queue) + self._handed_over()[0]

    def _handed_over(self) -> tuple[int, int]:
        """Inputs (and their tokens) of batches handed to a device thread behind the pass
        running there: out of the queue, still waiting for a pass (admission counts them
        against the queue's limits)."""
        inputs = tokens = 0
        for instance in self._instances:
            waiting = [flight for flight in instance.flights if not flight.ended][1:]
            inputs += sum(len(flight.batch) for flight in waiting)
            tokens += sum(flight.tokens for flight in waiting)
        return inputs, tokens

    @property
    def pending(self) -> int:
        """Inputs queued or in the forward pass."""
        return len(self._queue) + self._running

    def _update_idle(self) -> None:
        """Keep `_idle` (what `drain` awaits) in step with the queue and the forward pass."""
        if self._queue or self._running:
            self._idle.clear()
        else:
            self._idle.set()

    # -- metrics -----------------------------------------------------------

    def _set_busy(self, instance: Instance[Payload, Result], busy: bool) -> None:
        instance.busy = busy
        if self._metrics is not None:
            count = sum(i.busy for i in self._instances)
            self._metrics.instances_busy.labels(self.name).set(count)

    def _set_depth(self) -> None:
        """The queue depth metric: inputs waiting for a pass, a batch handed over behind
        a running one included (as admission counts them)."""
        if self._metrics is not None:
            self._metrics.queue_depth.labels(self.name).set(self.queued)

    def _count_rejected(self, reason: str, count: int = 1) -> None:
        if self._metrics is not None:
            self._metrics.rejected.labels(self.name, reason).inc(count)
