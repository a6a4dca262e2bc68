"""Dynamic batcher: groups queued inputs into length-sorted batches under a padded-token budget.

One batcher serves one model. Callers `submit` inputs and await the returned futures;
a worker task per model instance (a backend session of its own) forms batches and runs
them, one at a time each, in a dedicated thread, so the event loop keeps accepting and
tokenizing requests meanwhile and a free instance takes the next batch.

Dispatch policy:
- idle (nothing ran since the queue was last empty): dispatch at once — a lone
  request pays no batching delay;
- busy: dispatch as soon as the next batch is full (count or token budget), or
  when its oldest input has waited `max_wait_s`, whichever comes first. After a pass
  that answered `REGROUP_MIN_INPUTS` or more inputs, the batch may also wait that long
  from the end of the pass (but no longer than `REGROUP_PASS_SHARE` of the pass):
  callers that send their next request as soon as they have an answer (a job running
  N requests at a time) then join the next batch. Else half of them would be answered
  while the other half runs, and the two halves would alternate in separate batches
  of half the size for as long as the load lasts.
Fairness: a batch takes inputs round-robin across the waiting requests
(`app/engine/fair_queue.py`), so a small request never waits behind whole large ones.
Priority: a request may come as low priority (`low=True`: an explanation's
perturbations). Low-priority inputs ride only in batches of their own, formed when no
normal input waits; while interactive traffic is around (a normal input arrived, or a
normal pass ended, within the last `LOW_PRIORITY_QUIET_S`) such a batch holds at most
`LOW_PRIORITY_BUSY_BATCH` inputs, so a normal input that arrives meanwhile waits for one
small pass at most, and low-priority passes may take at most `LOW_PRIORITY_SHARE` of the
recent forward-pass time (on a small machine a pass takes every core, the HTTP side's
included, so even passes run in the gaps between interactive batches slow those down);
after a quiet spell it holds up to `LOW_PRIORITY_BATCH` and takes whatever time is free.
Low-priority requests count against the queue limits but may fill only half of them
(`LOW_PRIORITY_QUEUE_SHARE`), so interactive requests always find room; one larger than
that half (an explanation comes whole) is taken only while no other low-priority input
waits, and counts against normal requests' limits only up to the half.
Admission: a request is refused at once (Overloaded, 429) when the work that would run
before it is done cannot finish before its deadline, measured from recent passes. A
low-priority request is priced at the throughput low-priority work gets now: the tokens
its passes ran over the wall time low work waited (a stall without any low pass counts
too), so while interactive traffic keeps the passes busy an explanation that could not
finish is refused before it starts, not answered 504 at its deadline.
Before forming a batch it drops inputs whose caller went away or whose deadline
passed, so no forward pass is spent on an answer nobody will read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from app.engine.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded
from app.engine.fair_queue import FairQueue
from app.engine.timing import record_timing
from app.metrics import Metrics

log = logging.getLogger(__name__)

Payload = TypeVar("Payload")
Result = TypeVar("Result")

RESTART_DELAY_S = 0.5

# See the module docstring. Measured on 2 cores (quick `make bench` runs alternating with
# the rule off): closed loop, 8 clients 246 / 227 sequences/s against 226 / 216 (batches
# of 7.9 inputs against 4.5-5.3), 32 clients 279 / 278 against 272 / 269; open loop at
# 50 % and 80 % of capacity no slower (p50 8.6-10.9 ms against 9.1-10.1 at 50 %). Below
# this size, passes are short and the load light: only the oldest input's wait counts.
REGROUP_MIN_INPUTS = 4
# The wait after a pass is also held to this share of the pass, so where passes are
# short (a GPU) waiting for callers that may not come back costs the engine little.
REGROUP_PASS_SHARE = 0.1

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
# Weight of the newest pass in the running estimate of seconds per token (admission).
PASS_COST_SMOOTHING = 0.2
# Low-priority batches (see the module docstring): their size while normal inputs come
# and go, their size after LOW_PRIORITY_QUIET_S without one, and the share of the queue
# limits low-priority inputs may fill.
LOW_PRIORITY_BUSY_BATCH = 2
LOW_PRIORITY_BATCH = 8
LOW_PRIORITY_QUIET_S = 0.1
LOW_PRIORITY_QUEUE_SHARE = 0.5
LOW_PRIORITY_SHARE = 0.2  # of recent pass time, while interactive traffic is around
PASS_SHARE_DECAY = 0.9  # per pass: how fast the record of recent pass time forgets
# Interactive traffic this recent prices low-priority work at its observed throughput (or,
# before any was observed, at LOW_PRIORITY_SHARE of the recent passes' speed).
LOW_PRIORITY_PRICE_WINDOW_S = 1.0
# Observed low-priority throughput is trusted alone once it spans this many seconds (of
# decayed record); before that the share rule's bound caps it.
LOW_PRIORITY_TRUST_S = 1.0
# Low-priority work must be priced to finish within this share of its deadline: its
# throughput is a forecast (interactive traffic may grow), and an explanation still has
# its fit to do after the passes.
LOW_PRIORITY_PRICE_MARGIN = 0.8

# Runs one batch in the worker thread; returns one result per payload, in order.
BatchRunner = Callable[[list[Payload]], Sequence[Result]]

PayloadIn = TypeVar("PayloadIn", contravariant=True)


class BatchService(Protocol[PayloadIn, Result]):
    """What the request side needs of a batcher: a `DynamicBatcher` in this process, or
    the engine process's one through `app/engine/remote.py`."""

    async def process(
        self, payloads: Sequence[tuple[PayloadIn, int]], timeout_s: float, *, low: bool = False
    ) -> list[Result]:
        """`low`: queue at low priority (see DynamicBatcher)."""
        ...


@dataclass(frozen=True)
class BatchLimits:
    """How large a batch may grow and how long inputs may wait for one."""

    max_batch_size: int = 64
    max_batch_tokens: int = 16384
    max_wait_s: float = 0.002
    max_queue: int = 1024  # inputs waiting
    max_queue_tokens: int = 262144  # their tokens: long inputs fill the queue sooner


@dataclass(eq=False)
class _Instance(Generic[Payload, Result]):
    """One model instance: its runner, the thread its passes run in, and its worker task."""

    index: int
    run_batch: BatchRunner[Payload, Result]
    executor: ThreadPoolExecutor
    worker: asyncio.Task[None] | None = None
    restart: asyncio.TimerHandle | None = None  # a crashed worker's pending restart
    busy: bool = False


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


def settle(futures: list[asyncio.Future[Any]]) -> None:
    """Leave no input behind: cancel those still queued (the batcher then drops them) and
    mark the failures of the rest as seen (asyncio would log them as never retrieved)."""
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()


class DynamicBatcher(Generic[Payload, Result]):
    """Queues inputs of one model and runs them in batches, answering each exactly once."""

    def __init__(
        self,
        name: str,
        run_batch: BatchRunner[Payload, Result] | Sequence[BatchRunner[Payload, Result]],
        limits: BatchLimits,
        metrics: Metrics | None = None,
        gate: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> None:
        """`run_batch`: one runner, or one per model instance (each its own session).
        `gate`: entered around each batch in its thread (a model's pass gate); the time
        waiting there is not counted as the batch's."""
        self.name = name
        self.limits = limits
        self._metrics = metrics
        self._gate = gate
        runners = [run_batch] if callable(run_batch) else list(run_batch)
        self._instances = [
            _Instance(index, runner, ThreadPoolExecutor(1, f"infer-{name}-{index}"))
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
        # Smoothed seconds and tokens of recent passes: their ratio prices queued work.
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
        self.restarts = 0
        if metrics is not None:  # series exist from the start, so rates and alerts see zeros
            for reason in REJECT_REASONS:
                metrics.rejected.labels(name, reason)
            metrics.queue_depth.labels(name).set(0)
            metrics.instances_busy.labels(name).set(0)
            for instance in self._instances:
                metrics.instance_batches.labels(name, str(instance.index))

    # -- lifecycle ---------------------------------------------------------

    @property
    def instances(self) -> int:
        return len(self._instances)

    def start(self) -> None:
        for instance in self._instances:
            self._start_worker(instance)

    def _start_worker(self, instance: _Instance[Payload, Result]) -> None:
        instance.restart = None
        instance.worker = asyncio.get_running_loop().create_task(
            self._work(instance), name=f"batcher-{self.name}-{instance.index}"
        )
        instance.worker.add_done_callback(lambda task: self._restart_if_crashed(instance, task))

    def _restart_if_crashed(
        self, instance: _Instance[Payload, Result], worker: asyncio.Task[None]
    ) -> None:
        """A worker that died of a bug is restarted; until then `alive` (and /ready) is false."""
        if worker.cancelled() or worker is not instance.worker:
            return
        self.restarts += 1
        log.error(
            "model %s: batch worker %d died (%r); restarting in %.1f s",
            self.name,
            instance.index,
            worker.exception(),
            RESTART_DELAY_S,
        )
        instance.restart = asyncio.get_running_loop().call_later(
            RESTART_DELAY_S, self._start_worker, instance
        )

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
    def alive(self) -> bool:
        """Every instance's worker runs."""
        return all(i.worker is not None and not i.worker.done() for i in self._instances)

    @property
    def queued(self) -> int:
        """Inputs waiting for a forward pass."""
        return len(self._queue)

    @property
    def pending(self) -> int:
        """Inputs queued or in the forward pass."""
        return len(self._queue) + self._running

    async def stop(self) -> None:
        """Stop the worker and fail whatever is still queued (call `drain` first to finish it)."""
        for instance in self._instances:
            if instance.restart is not None:  # a stopped batcher must not come back
                instance.restart.cancel()
                instance.restart = None
            worker, instance.worker = instance.worker, None
            # Awaiting a worker that died of a bug would re-raise what was logged.
            if worker is not None and not worker.done():
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
        fail(self._queue.clear(), NotReady("the server is shutting down"))
        self._set_depth()
        self._update_idle()
        for instance in self._instances:
            instance.executor.shutdown(wait=False, cancel_futures=True)

    # -- submission --------------------------------------------------------

    def submit(
        self, payloads: Sequence[tuple[Payload, int]], timeout_s: float, *, low: bool = False
    ) -> list[asyncio.Future[Result]]:
        """Queue `(payload, token_count)` pairs; all are accepted or none (429 on a full queue)."""
        return [item.future for item in self.enqueue(payloads, timeout_s, low=low)]

    def enqueue(
        self, payloads: Sequence[tuple[Payload, int]], timeout_s: float, *, low: bool = False
    ) -> list[QueuedInput[Payload, Result]]:
        """Like `submit`, returning the queued inputs, which also record when they ran."""
        tokens = sum(count for _, count in payloads)
        limits, queue = self.limits, self._queue
        low_queue = int(limits.max_queue * LOW_PRIORITY_QUEUE_SHARE)
        low_tokens = int(limits.max_queue_tokens * LOW_PRIORITY_QUEUE_SHARE)
        if low:
            max_queue, max_tokens = low_queue, low_tokens
            # An explanation comes whole: one over the half is taken while no other waits.
            alone = not queue.low_count
            too_many = not alone and len(queue) + len(payloads) > max_queue
            too_long = not alone and queue.tokens + tokens > max_tokens
        else:
            max_queue, max_tokens = limits.max_queue, limits.max_queue_tokens
            # Low-priority inputs past their half (one whole explanation) leave room here.
            count = len(queue) - max(queue.low_count - low_queue, 0)
            queued_tokens = queue.tokens - max(queue.low_tokens - low_tokens, 0)
            too_many = count + len(payloads) > max_queue
            # A request over the token bound on its own is still taken into an empty queue.
            too_long = bool(queue) and queued_tokens + tokens > max_tokens
        if too_many or too_long:
            self._count_rejected("queue_full", len(payloads))
            priority = " (low priority: half the limits)" if low else ""
            raise Overloaded(
                f"model '{self.name}' has {len(queue)} inputs ({queue.tokens} tokens) "
                f"queued; limits {max_queue} inputs, {max_tokens} tokens{priority}; "
                "retry later"
            )
        if timeout_s <= 0:  # spent before queueing (tokenizing, an earlier pass)
            raise DeadlineExceeded(f"model '{self.name}': the request deadline passed")
        expected_s = self._expected_seconds(len(payloads), tokens, low=low)
        if expected_s > timeout_s * (LOW_PRIORITY_PRICE_MARGIN if low else 1.0):
            self._count_rejected(
                "low_would_miss_deadline" if low else "would_miss_deadline", len(payloads)
            )
            kind = " at low priority (the share interactive traffic leaves)" if low else ""
            raise Overloaded(
                f"model '{self.name}' is busy: this request would take about "
                f"{expected_s:.1f} s{kind} with the work queued ahead of it, past its "
                f"{timeout_s:.3g} s deadline; retry later or send fewer inputs",
                retry_after_s=max(1, math.ceil(expected_s - timeout_s)),
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        if low and self._low_since is None:
            self._low_since = now  # low work waits from now: its throughput's clock runs
        items = [
            QueuedInput(payload, tokens, now + timeout_s, loop.create_future(), now, low=low)
            for payload, tokens in payloads
        ]
        queue.add(items, low=low)
        if not low:
            self._last_normal_at = now
        self._set_depth()
        self._update_idle()
        self._arrived.set()
        return items

    async def process(
        self, payloads: Sequence[tuple[Payload, int]], timeout_s: float, *, low: bool = False
    ) -> list[Result]:
        """Queue inputs and await their results, in order, within `timeout_s`; `low`: at
        low priority.

        However the wait ends (answer, error, timeout, the caller cancelled), no input is
        left behind in the queue; the time spent goes to the current request's account.
        """
        queued = self.enqueue(payloads, timeout_s, low=low)
        futures = [item.future for item in queued]
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                results = [await future for future in futures]
        except TimeoutError:
            raise DeadlineExceeded(
                f"model '{self.name}': no answer before the request deadline "
                f"({timeout_s:.3g} s left when queued)"
            ) from None
        finally:
            settle(futures)
        record_timing(queued, sum(tokens for _, tokens in payloads))
        return results

    # -- the worker --------------------------------------------------------

    async def _work(self, instance: _Instance[Payload, Result]) -> None:
        """One instance's loop. Instances share the queue; each takes the next batch when it
        is free (no await between choosing a batch and taking it, so none is taken twice)."""
        idle = True
        regroup_until = -math.inf  # how long the batch may wait for callers just answered
        while True:
            self._drop_dead()
            if not self._queue:
                idle = True
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if not idle:
                await self._wait_to_fill(regroup_until)
                self._drop_dead()
            hold_s = self._low_priority_hold()
            if hold_s > 0:  # low-priority work has had its share: wait for either kind
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), hold_s)
                continue
            batch = self._take_batch()
            if batch:
                idle = False
                try:
                    pass_s = await self._execute(batch, instance)
                    regroup_until = self._regroup_until(len(batch), pass_s)
                except BaseException as error:
                    # Never leave a caller waiting: answer the batch, then let the
                    # worker die (a bug) or stop (cancelled: shutting down) as it would have.
                    if isinstance(error, asyncio.CancelledError):
                        fail(batch, NotReady("the server is shutting down"))
                    else:
                        fail(batch, InferenceFailed(f"batch worker failed: {error!r}"))
                    raise
                finally:
                    # Only here, with the batch answered: `_take_batch` may empty the queue
                    # before `_execute` counts the batch as running.
                    self._update_idle()

    def _regroup_until(self, answered: int, pass_s: float) -> float:
        """Until when the next batch may wait for the callers a pass just answered (see
        the module docstring); -inf after a pass of few inputs."""
        if answered < REGROUP_MIN_INPUTS:
            return -math.inf
        return time.monotonic() + min(self.limits.max_wait_s, REGROUP_PASS_SHARE * pass_s)

    async def _wait_to_fill(self, regroup_until: float) -> None:
        """Wait until the next batch is full, or its oldest input has waited `max_wait_s`
        and `regroup_until` has passed."""
        while self._queue:
            _, full = self._select()
            oldest_due = self._queue.oldest().enqueued_at + self.limits.max_wait_s
            remaining = max(oldest_due, regroup_until) - time.monotonic()
            if full or remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _select(self) -> tuple[int, bool]:
        """How many queued inputs, round-robin across requests, fit the next batch; and
        whether it is full.

        Every waiting request gets a share of each batch, so none starves; the budget
        counts padded tokens (batch size x longest input), what the batch would cost
        padded in one pass: an upper bound on its passes, padded or packed.
        """
        limits = self.limits
        count, longest = 0, 0
        normal = self._queue.normal_count
        low_cap = self._low_batch_size()
        for item in self._queue.round_robin():
            if count == limits.max_batch_size:
                return count, True
            if count >= normal:  # the rest are low priority
                if normal:
                    break  # never in a batch with normal inputs
                if count == low_cap:
                    return count, True
            new_longest = max(longest, item.tokens)
            if count and (count + 1) * new_longest > limits.max_batch_tokens:
                return count, True
            count, longest = count + 1, new_longest
        return count, count == limits.max_batch_size

    def _low_priority_hold(self) -> float:
        """Seconds to hold back the next batch, which would be low-priority only, because
        such passes had their share of recent pass time while normal inputs come; 0 else."""
        queue = self._queue
        if queue.normal_count or not queue.low_count:
            return 0.0
        quiet_in = self._last_normal_at + LOW_PRIORITY_QUIET_S - time.monotonic()
        if quiet_in <= 0 or self._low_seconds <= LOW_PRIORITY_SHARE * self._all_seconds:
            return 0.0
        return quiet_in

    def _low_batch_size(self) -> int:
        """How many low-priority inputs a batch may take now (see the module docstring)."""
        quiet = time.monotonic() - self._last_normal_at >= LOW_PRIORITY_QUIET_S
        return LOW_PRIORITY_BATCH if quiet else LOW_PRIORITY_BUSY_BATCH

    def _take_batch(self) -> list[QueuedInput[Payload, Result]]:
        count, _ = self._select()
        batch = self._queue.take(count)
        self._set_depth()
        # Sorted by length, neighbours in the padded batch differ least.
        batch.sort(key=lambda item: item.tokens)
        return batch

    def _drop_dead(self) -> None:
        """Remove inputs whose caller gave up (cancelled) or whose deadline passed."""
        if not self._queue:
            return
        now = time.monotonic()
        gone = self._queue.remove(lambda item: item.future.done() or item.deadline <= now)
        for item in gone:
            if item.future.done():
                # The caller gave up: at its deadline (it timed out waiting) or before.
                self._count_rejected("deadline" if item.deadline <= now else "cancelled")
            else:
                item.future.set_exception(
                    DeadlineExceeded("the request deadline passed before inference started")
                )
                self._count_rejected("deadline")
        if gone:
            self._forget_low_wait()
            self._set_depth()
            self._update_idle()

    def _expected_seconds(self, inputs: int, tokens: int, *, low: bool = False) -> float:
        """How long a new request of `inputs` inputs (`tokens` in all) would take: the work
        that round-robin runs before its last input, and its own, priced at recent passes.

        Zero before any pass was measured, and for a normal request while nothing is queued
        or running (a request into an idle model always runs at once); a low-priority one
        (an explanation, priced whole) may be too large even then.
        """
        if self._pass_tokens <= 0 or not (low or self._queue or self._running):
            return 0.0
        ahead = self._queue.tokens_served_before(inputs, low=low) + self._running_tokens
        # Instances run batches side by side: together they go that many times as fast.
        speed = self._pass_tokens / self._pass_seconds * len(self._instances)  # tokens/s
        if not low:
            return (ahead + tokens) / speed
        normal = self._queue.tokens - self._queue.low_tokens
        return normal / speed + (ahead - normal + tokens) / self._low_speed(speed)

    def _low_speed(self, speed: float) -> float:
        """Tokens per second low-priority work gets now: all of `speed` after a quiet
        spell; while interactive traffic is around, what low work was seen to get (the
        current wait without a low pass included), never more than LOW_PRIORITY_SHARE of
        the wall time at the speed of low passes (their small batches run slower per
        token): the share rule's bound, which also keeps a first lucky pass from
        promising more, until enough was seen."""
        now = time.monotonic()
        if now - self._last_normal_at >= LOW_PRIORITY_PRICE_WINDOW_S:
            return speed
        if self._low_pass_seconds > 0:
            speed = self._low_pass_tokens / self._low_pass_seconds
        bound = speed * LOW_PRIORITY_SHARE
        waiting = 0.0 if self._low_since is None else now - self._low_since
        seconds = self._low_done_seconds + waiting
        if self._low_done_tokens <= 0 or seconds <= 0:
            # Nothing observed yet; a wait of seconds without a pass says it is slower still.
            return bound / max(waiting, 1.0)
        observed = self._low_done_tokens / seconds
        return observed if self._low_done_seconds >= LOW_PRIORITY_TRUST_S else min(observed, bound)

    def _measure_low(self, finished: float, seconds: float, tokens: int) -> None:
        """Record a low pass: its tokens against its own seconds, and against the wall
        time low work waited for it."""
        since = finished if self._low_since is None else self._low_since
        keep = PASS_SHARE_DECAY
        self._low_pass_tokens = keep * self._low_pass_tokens + tokens
        self._low_pass_seconds = keep * self._low_pass_seconds + seconds
        self._low_done_tokens = keep * self._low_done_tokens + tokens
        self._low_done_seconds = keep * self._low_done_seconds + (finished - since)
        self._low_since = finished
        self._forget_low_wait()

    def _forget_low_wait(self) -> None:
        """No low-priority input queued or running: the throughput clock stops."""
        if not self._queue.low_count and not self._low_running:
            self._low_since = None

    def _measure_pass(self, seconds: float, tokens: int) -> None:
        if self._pass_tokens <= 0:
            self._pass_seconds, self._pass_tokens = seconds, float(tokens)
            return
        keep = 1 - PASS_COST_SMOOTHING
        self._pass_seconds = keep * self._pass_seconds + PASS_COST_SMOOTHING * seconds
        self._pass_tokens = keep * self._pass_tokens + PASS_COST_SMOOTHING * tokens

    async def _execute(
        self, batch: list[QueuedInput[Payload, Result]], instance: _Instance[Payload, Result]
    ) -> float:
        """Run a batch on `instance` and answer its inputs; the seconds its passes ran."""
        started = time.monotonic()
        metrics = self._metrics
        if metrics is not None:
            wait = metrics.queue_wait.labels(self.name)
            for item in batch:
                wait.observe(started - item.enqueued_at)
        tokens = sum(item.tokens for item in batch)
        low = batch[0].low  # a batch is all of one priority
        self._running += len(batch)
        self._running_tokens += tokens
        self._low_running += len(batch) if low else 0
        self._set_busy(instance, True)
        try:
            outcomes, seconds = await asyncio.get_running_loop().run_in_executor(
                instance.executor, self._run_gated, instance.run_batch, [i.payload for i in batch]
            )
        finally:
            self._running -= len(batch)
            self._running_tokens -= tokens
            self._low_running -= len(batch) if low else 0
            self._set_busy(instance, False)
        finished = time.monotonic()
        self._measure_pass(seconds, tokens)
        if low:
            self._measure_low(finished, seconds, tokens)
        else:  # its callers answer now and may send more: not quiet yet
            self._last_normal_at = max(self._last_normal_at, finished)
        self._low_seconds = PASS_SHARE_DECAY * self._low_seconds + (seconds if low else 0.0)
        self._all_seconds = PASS_SHARE_DECAY * self._all_seconds + seconds
        if metrics is not None:
            metrics.inference_duration.labels(self.name).observe(finished - started)
            metrics.instance_batches.labels(self.name, str(instance.index)).inc()
        for item, outcome in zip(batch, outcomes, strict=True):
            item.started_at, item.finished_at = started, finished
            if item.future.done():
                continue  # the caller went away while its input was running
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
        return seconds

    def _run_gated(
        self, run_batch: BatchRunner[Payload, Result], payloads: list[Payload]
    ) -> tuple[list[Result | InferenceFailed], float]:
        """Run a batch through the gate; its outcomes, and the seconds it ran (not waited)."""
        with self._gate():
            started = time.perf_counter()
            outcomes = self._run_guarded(run_batch, payloads)
            return outcomes, time.perf_counter() - started

    def _run_guarded(
        self, run_batch: BatchRunner[Payload, Result], payloads: list[Payload]
    ) -> list[Result | InferenceFailed]:
        """Run a batch; if it fails, retry each input alone so one bad input fails only itself."""
        try:
            return list(run_batch(payloads))
        except Exception as error:
            if len(payloads) == 1:
                log.exception("model %s: forward pass failed", self.name)
                return [InferenceFailed(f"inference failed: {error}")]
            log.warning(
                "model %s: batch of %d failed (%s); retrying inputs one by one",
                self.name,
                len(payloads),
                error,
            )
        return [
            outcome for payload in payloads for outcome in self._run_guarded(run_batch, [payload])
        ]

    def _update_idle(self) -> None:
        """Keep `_idle` (what `drain` awaits) in step with the queue and the forward pass."""
        if self._queue or self._running:
            self._idle.clear()
        else:
            self._idle.set()

    # -- metrics -----------------------------------------------------------

    def _set_busy(self, instance: _Instance[Payload, Result], busy: bool) -> None:
        instance.busy = busy
        if self._metrics is not None:
            count = sum(i.busy for i in self._instances)
            self._metrics.instances_busy.labels(self.name).set(count)

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.labels(self.name).set(len(self._queue))

    def _count_rejected(self, reason: str, count: int = 1) -> None:
        if self._metrics is not None:
            self._metrics.rejected.labels(self.name, reason).inc(count)
