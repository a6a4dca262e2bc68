"""Dynamic batcher: groups queued inputs into length-sorted batches under a padded-token budget.

One batcher serves one model. Callers `submit` inputs and await the returned futures;
a worker task per model instance (a backend session of its own) forms batches and runs
them, one at a time each, in a dedicated thread, so the event loop keeps accepting and
tokenizing requests meanwhile and a free instance takes the next batch.

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
import math
import time
from collections.abc import Sequence

from app.engine.batching.core import (
    BatchFunction,
    BatchLimits,
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

    # -- the worker --------------------------------------------------------

    async def _work(self, instance: Instance[Payload, Result]) -> None:
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

    async def _execute(
        self, batch: list[QueuedInput[Payload, Result]], instance: Instance[Payload, Result]
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
        self._record_pass(finished, seconds, tokens, low)
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
        self, run_batch: BatchFunction[Payload, Result], payloads: list[Payload]
    ) -> tuple[list[Result | InferenceFailed], float]:
        """Run a batch through the gate; its outcomes, and the seconds it ran (not waited)."""
        with self._gate():
            started = time.perf_counter()
            outcomes = self._run_guarded(run_batch, payloads)
            return outcomes, time.perf_counter() - started

    def _run_guarded(
        self, run_batch: BatchFunction[Payload, Result], payloads: list[Payload]
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
