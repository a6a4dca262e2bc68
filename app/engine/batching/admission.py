"""Admission: which requests a batcher takes, priced at the throughput recent passes had.

A request is refused at once (Overloaded, 429) when the queue is full (inputs or tokens),
or when the work that would run before it is done cannot finish before its deadline,
measured from recent passes. Low-priority requests (`low=True`: an explanation's
perturbations) count against the queue limits but may fill only half of them
(`LOW_PRIORITY_QUEUE_SHARE`), so interactive requests always find room; one larger than
that half (an explanation comes whole) is taken only while no other low-priority input
waits, and counts against normal requests' limits only up to the half. A low-priority
request is priced at the throughput low-priority work gets now: the tokens its passes
ran over the wall time low work waited (a stall without any low pass counts too), so
while interactive traffic keeps the passes busy an explanation that could not finish is
refused before it starts, not answered 504 at its deadline.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

from app.engine.batching.core import (
    BatcherCore,
    Payload,
    QueuedInput,
    Result,
)
from app.engine.errors import DeadlineExceeded, Overloaded

# Weight of the newest pass in the running estimate of seconds per token (admission).
PASS_COST_SMOOTHING = 0.2
# The share of the queue limits low-priority inputs may fill.
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


class Admission(BatcherCore[Payload, Result]):
    """Takes or refuses requests; records what passes cost to price the next ones."""

    def enqueue(
        self, payloads: Sequence[tuple[Payload, int]], timeout_s: float, *, low: bool = False
    ) -> list[QueuedInput[Payload, Result]]:
        """Like `submit`, returning the queued inputs, which also record when they ran."""
        tokens = sum(count for _, count in payloads)
        limits, queue = self.limits, self._queue
        # A batch handed over behind a running pass still waits for it: it counts here.
        handed_inputs, handed_tokens = self._handed_over()
        waiting, waiting_tokens = len(queue) + handed_inputs, queue.tokens + handed_tokens
        low_queue = int(limits.max_queue * LOW_PRIORITY_QUEUE_SHARE)
        low_tokens = int(limits.max_queue_tokens * LOW_PRIORITY_QUEUE_SHARE)
        if low:
            max_queue, max_tokens = low_queue, low_tokens
            # An explanation comes whole: one over the half is taken while no other waits.
            alone = not queue.low_count
            too_many = not alone and waiting + len(payloads) > max_queue
            too_long = not alone and waiting_tokens + tokens > max_tokens
        else:
            max_queue, max_tokens = limits.max_queue, limits.max_queue_tokens
            # Low-priority inputs past their half (one whole explanation) leave room here.
            count = waiting - max(queue.low_count - low_queue, 0)
            queued_tokens = waiting_tokens - max(queue.low_tokens - low_tokens, 0)
            too_many = count + len(payloads) > max_queue
            # A request over the token bound on its own is still taken into an empty queue.
            too_long = bool(waiting) and queued_tokens + tokens > max_tokens
        if too_many or too_long:
            self._count_rejected("queue_full", len(payloads))
            priority = " (low priority: half the limits)" if low else ""
            raise Overloaded(
                f"model '{self.name}' has {waiting} inputs ({waiting_tokens} tokens) "
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

    def _record_pass(self, finished: float, seconds: float, tokens: int, low: bool) -> None:
        """Record a pass that ended at `finished` after running `seconds` over `tokens`."""
        self._measure_pass(seconds, tokens)
        if low:
            self._measure_low(finished, seconds, tokens)
        else:  # its callers answer now and may send more: not quiet yet
            self._last_normal_at = max(self._last_normal_at, finished)
        self._low_seconds = PASS_SHARE_DECAY * self._low_seconds + (seconds if low else 0.0)
        self._all_seconds = PASS_SHARE_DECAY * self._all_seconds + seconds

    def _measure_pass(self, seconds: float, tokens: int) -> None:
        if self._pass_tokens <= 0:
            self._pass_seconds, self._pass_tokens = seconds, float(tokens)
            return
        keep = 1 - PASS_COST_SMOOTHING
        self._pass_seconds = keep * self._pass_seconds + PASS_COST_SMOOTHING * seconds
        self._pass_tokens = keep * self._pass_tokens + PASS_COST_SMOOTHING * tokens

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
