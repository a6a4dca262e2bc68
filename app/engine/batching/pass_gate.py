"""One model's forward passes, one at a time, the embedding path first.

The embedding and attention paths have their own batchers and threads, but they share
the cores: an attention pass running beside an embedding pass slows it, since both
sessions want every core (each ONNX Runtime pass waits for its slowest thread). So a
model's attention passes take turns with its embedding passes through its gate (the
embedding passes of several instances may run side by side), and an attention pass
also waits while embedding inputs are queued, for at most `max_defer_s` so attention
is never starved.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

# How long an attention pass yields to queued embedding work before it runs anyway.
MAX_DEFER_S = 1.0
# How often a deferred pass looks again at the embedding queue (which has no signal).
RECHECK_S = 0.005


class PassGate:
    """Primary passes run side by side, a secondary pass alone; secondary passes yield to
    queued primary work."""

    def __init__(
        self, primary_queued: Callable[[], bool], max_defer_s: float = MAX_DEFER_S
    ) -> None:
        self._primary_queued = primary_queued
        self._max_defer_s = max_defer_s
        self._turn = threading.Condition()
        self._primaries = 0  # primary passes running
        self._secondary = False  # a secondary pass running

    @contextlib.contextmanager
    def primary(self) -> Iterator[None]:
        """An embedding pass: waits only for a secondary pass already running."""
        with self._turn:
            self._turn.wait_for(lambda: not self._secondary)
            self._primaries += 1
        try:
            yield
        finally:
            with self._turn:
                self._primaries -= 1
                self._turn.notify_all()

    @contextlib.contextmanager
    def secondary(self) -> Iterator[None]:
        """An attention pass: waits for the running pass, and while embedding inputs are
        queued, up to `max_defer_s`."""
        give_up = time.monotonic() + self._max_defer_s
        with self._turn:
            while self._secondary or (self._primary_queued() and time.monotonic() < give_up):
                self._turn.wait(RECHECK_S)
            # Claimed: no primary pass starts now, and the running ones finish first.
            self._secondary = True
            self._turn.wait_for(lambda: not self._primaries)
        try:
            yield
        finally:
            with self._turn:
                self._secondary = False
                self._turn.notify_all()
