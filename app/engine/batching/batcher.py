"""Dynamic batcher: groups queued inputs into length-sorted batches under a padded-token budget.

One batcher serves one model. Callers `submit` inputs and await the returned futures;
a worker task per model instance (a backend session of its own) forms batches and
hands them to the instance's threads, so the event loop keeps accepting and tokenizing
requests meanwhile and a free instance takes the next batch.

Each instance has two threads. The device thread runs forward passes only, one batch
after the other in the order handed over; the host thread prepares a batch (pads or
packs its passes) while the device runs the one before it, and finishes each batch
(pooling, one result per input) while the device runs the next. Answers go back to
the callers through the event loop from the host thread. So when the next batch is
ready (full) before the running pass ends, the device starts it at once: the device
never waits for pooling, answering, or a turn of the event loop (issue #30, item 4;
README, "How batching works"). A batch with no other unanswered batch around it is
prepared and finished in the device thread itself: there is nothing to overlap, and a
lone request's answer takes fewer thread hops.

This module holds the workers: their loop, start, restart after a crash, and stop, and
each batch run guarded (a failing batch is retried input by input, so one bad input
fails only itself). What is taken: app/engine/batching/admission.py; when a batch goes
and what rides in it: app/engine/batching/scheduling.py; the state both keep:
app/engine/batching/core.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from app.engine.batching.core import (
    BatchFunction,
    BatchLimits,
    Flight,
    Instance,
    Payload,
    QueuedInput,
    Result,
    fail,
    waited,
)
from app.engine.batching.scheduling import Scheduling
from app.engine.errors import DeadlineExceeded, InferenceFailed, NotReady
from app.engine.models.batches import settle
from app.engine.timing import record_timing

__all__ = ["BatchLimits", "DynamicBatcher", "QueuedInput"]

log = logging.getLogger(__name__)

RESTART_DELAY_S = 0.5
# Batches an instance may hand its device thread behind the pass running there: one, so
# the device goes from pass to pass while the batch after the next still fills.
LOOKAHEAD = 1


class DynamicBatcher(Scheduling[Payload, Result]):
    """Queues inputs of one model and runs them in batches, answering each exactly once."""

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        for instance in self._instances:
            self._start_worker(instance)

    def _start_worker(self, instance: Instance[Payload, Result]) -> None:
        instance.restart = None
        instance.worker = asyncio.get_running_loop().create_task(
            self._work(instance), name=f"batcher-{self.name}-{instance.index}"
        )
        instance.worker.add_done_callback(lambda task: self._restart_if_crashed(instance, task))

    def _restart_if_crashed(
        self, instance: Instance[Payload, Result], worker: asyncio.Task[None]
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

    @property
    def alive(self) -> bool:
        """Every instance's worker runs."""
        return all(i.worker is not None and not i.worker.done() for i in self._instances)

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
        shutting_down = NotReady("the server is shutting down")
        fail(self._queue.clear(), shutting_down)
        for instance in self._instances:
            # Batches handed over and not answered: answered now (a pass still running
            # finds its callers answered).
            for flight in instance.flights:
                fail(flight.batch, shutting_down)
                self._running -= len(flight.batch)
            instance.flights.clear()
            instance.executor.shutdown(wait=False, cancel_futures=True)
            instance.host.shutdown(wait=False, cancel_futures=True)
        self._set_depth()
        self._update_idle()

    # -- submission --------------------------------------------------------

    def submit(
        self, payloads: Sequence[tuple[Payload, int]], timeout_s: float, *, low: bool = False
    ) -> list[asyncio.Future[Result]]:
        """Queue `(payload, token_count)` pairs; all are accepted or none (429 on a full queue)."""
        return [item.future for item in self.enqueue(payloads, timeout_s, low=low)]

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
        record_timing(*waited(queued), len(queued), sum(tokens for _, tokens in payloads))
        return results

    # -- the worker ------------------------------------------------------

    async def _work(self, instance: Instance[Payload, Result]) -> None:
        """One instance's loop. Instances share the queue; each takes the next batch when it
        is free (no await between choosing a batch and taking it, so none is taken twice).

        Free means no pass is waiting on its device thread: while one runs, the next batch
        is taken as soon as it is full (`LOOKAHEAD`), and is prepared meanwhile, so the
        device starts it the moment the running pass ends, without a turn of the event
        loop. A batch that is not full waits for the running pass to end, and then for the
        usual rules (scheduling.py), so it may still fill with the callers that pass
        answers.
        """
        idle = True
        while True:
            self._drop_dead()
            on_device = instance.on_device
            if not self._queue or on_device > LOOKAHEAD:
                idle = idle or not (self._queue or on_device)
                self._arrived.clear()  # arrivals and ended passes both set it
                await self._arrived.wait()
                continue
            if on_device:
                if not await self._filled_while_running(instance):
                    continue  # the pass ended first: the usual rules, below, next time round
                self._drop_dead()
                if not self._ahead_ready():
                    continue  # callers left meanwhile: not full any more
            if not on_device and not idle:
                await self._wait_to_fill(lambda: self._regroup_until(instance.last_ended))
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
                    await self._execute(batch, instance)
                except BaseException as error:
                    # Never leave a caller waiting: answer the batch, then let the
                    # worker die (a bug) or stop (cancelled: shutting down) as it would have.
                    if isinstance(error, asyncio.CancelledError):
                        fail(batch, NotReady("the server is shutting down"))
                    else:
                        fail(batch, InferenceFailed(f"batch worker failed: {error!r}"))
                    raise
                finally:
                    # Only here, with the batch counted as running: `_take_batch` may empty
                    # the queue before `_execute` counts it.
                    self._update_idle()

    async def _filled_while_running(self, instance: Instance[Payload, Result]) -> bool:
        """Wait until the next batch may go behind the running pass (True: `_ahead_ready`)
        or `instance`'s passes have ended (False), whichever comes first."""
        while instance.on_device and self._queue:
            if self._ahead_ready():
                return True
            self._arrived.clear()  # arrivals and ended passes both set it
            await self._arrived.wait()
        return False

    def _ahead_ready(self) -> bool:
        """The next batch may go behind a running pass: it is full, and of normal
        priority (a low-priority batch handed over early would make a normal input that
        comes meanwhile wait for it)."""
        return self._queue.normal_count > 0 and self._select()[1]

    async def _execute(
        self, batch: list[QueuedInput[Payload, Result]], instance: Instance[Payload, Result]
    ) -> None:
        """Hand a batch to `instance`'s device thread, after those handed over before it.
        Behind a running pass it is prepared on the host thread meanwhile; on an idle
        device, in the device thread itself (nothing to overlap, one thread hop less)."""
        tokens = sum(item.tokens for item in batch)
        flight = Flight(batch, tokens, batch[0].low)  # a batch is all of one priority
        self._running += len(batch)
        self._running_tokens += tokens
        self._low_running += len(batch) if flight.low else 0
        behind = instance.on_device > 0
        instance.flights.append(flight)
        self._set_busy(instance, True)
        self._set_depth()  # out of the queue, but behind a running pass it still waits
        payloads = [item.payload for item in batch]
        prepared = instance.host.submit(instance.stages.prepare, payloads) if behind else None
        loop = asyncio.get_running_loop()
        instance.executor.submit(self._device_pass, instance, flight, payloads, prepared, loop)

    # -- in the device thread ----------------------------------------------

    def _device_pass(
        self,
        instance: Instance[Payload, Result],
        flight: Flight[Payload, Result],
        payloads: list[Payload],
        prepared: Future[Any] | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Run a batch's passes, then hand it to the host thread to finish and answer: the
        device thread goes straight on to the next batch handed over. With no other
        batch handed over and not answered, the device thread finishes the batch itself
        (a lone request's answer then takes one thread hop less)."""
        stages = instance.stages
        ready: Any = None
        raw: Any = None
        outcomes: list[Result | InferenceFailed] | None = None
        with self._gate():  # the time waiting here is not the batch's
            started = time.monotonic()
            try:
                ready = stages.prepare(payloads) if prepared is None else prepared.result()
                raw = stages.run(ready)
            except Exception as error:  # each input alone, through every stage
                outcomes = self._retry_alone(stages, payloads, error)
            finished = time.monotonic()
        # Any other batch not answered yet: one behind (the device goes on to it) or one
        # before, still being finished (answers keep the order batches ran in). Read
        # here, off the loop that keeps the list: a batch handed over just after the
        # look waits for this finishing (short: nothing was queued behind).
        behind = any(other is not flight for other in instance.flights)
        with contextlib.suppress(RuntimeError):  # the loop or the host closed: stopped
            loop.call_soon_threadsafe(self._pass_ended, instance, flight, started, finished)
            if behind:
                instance.host.submit(
                    self._finish, instance, flight, payloads, ready, raw, outcomes, loop
                )
            else:
                self._finish(instance, flight, payloads, ready, raw, outcomes, loop)

    # -- in the host thread ------------------------------------------------

    def _finish(
        self,
        instance: Instance[Payload, Result],
        flight: Flight[Payload, Result],
        payloads: list[Payload],
        ready: Any,
        raw: Any,
        outcomes: list[Result | InferenceFailed] | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Turn a batch's pass outputs into one result per input (pooling, splitting),
        beside the device's next pass, and answer them on the event loop."""
        if outcomes is None:
            try:
                outcomes = list(instance.stages.finish(ready, raw))
                if len(outcomes) != len(payloads):
                    raise ValueError(f"{len(outcomes)} results for {len(payloads)} inputs")
            except Exception as error:  # a rare bug: the passes again, here, one by one
                with self._gate():
                    outcomes = self._retry_alone(instance.stages, payloads, error)
        with contextlib.suppress(RuntimeError):  # the loop closed: stopped
            loop.call_soon_threadsafe(self._answer, instance, flight, outcomes)

    def _run_guarded(
        self, run_batch: BatchFunction[Payload, Result], payloads: list[Payload]
    ) -> list[Result | InferenceFailed]:
        """Run a batch; if it fails, retry each input alone so one bad input fails only itself."""
        try:
            outcomes: list[Result | InferenceFailed] = list(run_batch(payloads))
            if len(outcomes) != len(payloads):
                raise ValueError(f"{len(outcomes)} results for {len(payloads)} inputs")
            return outcomes
        except Exception as error:
            return self._retry_alone(run_batch, payloads, error)

    def _retry_alone(
        self, run_batch: BatchFunction[Payload, Result], payloads: list[Payload], error: Exception
    ) -> list[Result | InferenceFailed]:
        """After a batch failed with `error`: each input alone, so one bad input fails only
        itself (a batch of one has failed already)."""
        if len(payloads) == 1:
            log.error("model %s: forward pass failed", self.name, exc_info=error)
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

    # -- back on the event loop --------------------------------------------

    def _pass_ended(
        self,
        instance: Instance[Payload, Result],
        flight: Flight[Payload, Result],
        started: float,
        finished: float,
    ) -> None:
        """A batch's passes ended: record them, and wake the workers (the next batch)."""
        flight.ended = True
        batch, seconds = flight.batch, finished - started
        self._running_tokens -= flight.tokens
        self._low_running -= len(batch) if flight.low else 0
        self._set_busy(instance, instance.on_device > 0)
        self._set_depth()  # the batch behind it (if any) runs now
        self._record_pass(finished, seconds, flight.tokens, flight.low)
        flight.seconds = seconds
        instance.last_ended = flight
        for item in batch:
            item.started_at, item.finished_at = started, finished
        metrics = self._metrics
        if metrics is not None:
            wait = metrics.queue_wait.labels(self.name)
            for item in batch:
                wait.observe(started - item.enqueued_at)
            metrics.inference_duration.labels(self.name).observe(seconds)
            metrics.instance_batches.labels(self.name, str(instance.index)).inc()
        self._arrived.set()

    def _answer(
        self,
        instance: Instance[Payload, Result],
        flight: Flight[Payload, Result],
        outcomes: list[Result | InferenceFailed],
    ) -> None:
        """Answer a finished batch's inputs, each exactly once (a caller gone, or the
        batcher stopped, already has its answer)."""
        if flight not in instance.flights:
            return  # stopped: its callers were answered then
        instance.flights.remove(flight)
        self._running -= len(flight.batch)
        for item, outcome in zip(flight.batch, outcomes, strict=True):
            if item.future.done():
                continue  # the caller went away while its input was running
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
        # Its callers have their answers only now: the next batch's wait for them (the
        # regrouping rule) counts from here.
        flight.answered_at = time.monotonic()
        self._update_idle()
        self._arrived.set()
