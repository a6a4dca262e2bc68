"""Scheduling: when a batcher's next batch goes, and which queued inputs ride in it.

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
(`app/engine/batching/fair_queue.py`), so a small request never waits behind whole
large ones; sorted by length, neighbours in the padded batch differ least.
Priority: a request may come as low priority (`low=True`: an explanation's
perturbations). Low-priority inputs ride only in batches of their own, formed when no
normal input waits; while interactive traffic is around (a normal input arrived, or a
normal pass ended, within the last `LOW_PRIORITY_QUIET_S`) such a batch holds at most
`LOW_PRIORITY_BUSY_BATCH` inputs, so a normal input that arrives meanwhile waits for one
small pass at most, and low-priority passes may take at most `LOW_PRIORITY_SHARE` of the
recent forward-pass time (on a small machine a pass takes every core, the HTTP side's
included, so even passes run in the gaps between interactive batches slow those down);
after a quiet spell it holds up to `LOW_PRIORITY_BATCH` and takes whatever time is free.
Before forming a batch it drops inputs whose caller went away or whose deadline
passed, so no forward pass is spent on an answer nobody will read.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from app.engine.batching.admission import LOW_PRIORITY_SHARE, Admission
from app.engine.batching.core import Flight, Payload, QueuedInput, Result
from app.engine.errors import DeadlineExceeded

# See the module docstring. Measured on 2 cores (quick `make bench` runs alternating with
# the rule off): closed loop, 8 clients 246 / 227 sequences/s against 226 / 216 (batches
# of 7.9 inputs against 4.5-5.3), 32 clients 279 / 278 against 272 / 269; open loop at
# 50 % and 80 % of capacity no slower (p50 8.6-10.9 ms against 9.1-10.1 at 50 %). Below
# this size, passes are short and the load light: only the oldest input's wait counts.
REGROUP_MIN_INPUTS = 4
# The wait after a pass is also held to this share of the pass, so where passes are
# short (a GPU) waiting for callers that may not come back costs the engine little.
REGROUP_PASS_SHARE = 0.1

# Low-priority batches (see the module docstring): their size while normal inputs come
# and go, and their size after LOW_PRIORITY_QUIET_S without one.
LOW_PRIORITY_BUSY_BATCH = 2
LOW_PRIORITY_BATCH = 8
LOW_PRIORITY_QUIET_S = 0.1


class Scheduling(Admission[Payload, Result]):
    """Chooses each batch: when it goes, and which inputs, in which order."""

    def _regroup_until(self, last: Flight[Payload, Result] | None) -> float:
        """Until when the next batch may wait for the callers the last pass answered (see
        the module docstring), counted from their answers (pooled on the host thread
        after the pass): +inf while they are still being finished; -inf after a pass of
        few inputs."""
        if last is None or len(last.batch) < REGROUP_MIN_INPUTS:
            return -math.inf
        if last.answered_at is None:
            return math.inf
        return last.answered_at + min(self.limits.max_wait_s, REGROUP_PASS_SHARE * last.seconds)

    async def _wait_to_fill(self, regroup_until: Callable[[], float]) -> None:
        """Wait until the next batch is full, or its oldest input has waited `max_wait_s`
        and `regroup_until()` has passed (asked again at each wake-up: it moves on when
        the last pass's inputs are answered, after their pass ended)."""
        while self._queue:
            _, full = self._select()
            oldest_due = self._queue.oldest().enqueued_at + self.limits.max_wait_s
            remaining = max(oldest_due, regroup_until()) - time.monotonic()
            if full or remaining <= 0:
                return
            self._arrived.clear()
            try:
                # Until the answers (inf): an event sets `_arrived` then (uvloop takes
                # no infinite timer).
                await asyncio.wait_for(
                    self._arrived.wait(), None if math.isinf(remaining) else remaining
                )
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
