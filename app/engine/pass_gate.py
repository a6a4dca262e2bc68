"""One model's forward passes, one at a time, the embedding path first.

The embedding and attention paths have their own batchers and threads, but they share
the cores: an attention pass running beside an embedding pass slows it, since both
sessions want every core (each ONNX Runtime pass waits for its slowest thread). So a
model's passes take turns through its gate, and an attention pass also waits while
embedding inputs are queued, for at most `max_defer_s` so attention is never starved.
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
    """Lets one pass run at a time; secondary passes yield to queued primary work."""

    def __init__(
        self, primary_queued: Callable[[], bool], max_defer_s: float = MAX_DEFER_S
    ) -> None:
        self._primary_queued = primary_queued
        self._max_defer_s = max_defer_s
        self._turn = threading.Condition()
        self._busy = False

    @contextlib.contextmanager
    def primary(self) -> Iterator[None]:
        """An embedding pass: waits only for a pass already running."""
        with self._turn:
            self._turn.wait_for(lambda: not self._busy)
            self._busy = True
        try:
            yield
        finally:
            self._release()

    @contextlib.contextmanager
    def secondary(self) -> Iterator[None]:
        """An attention pass: waits for the running pass, and while embedding inputs are
        queued, up to `max_defer_s`."""
        give_up = time.monotonic() + self._max_defer_s
        with self._turn:
            while self._busy or (self._primary_queued() and time.monotonic() < give_up):
                self._turn.wait(RECHECK_S)
            self._busy = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._turn:
            self._busy = False
            self._turn.notify_all()
