"""The device's duty cycle: the wall time a model has a forward pass in flight.

`BusyClock` measures the union of a model's passes in time (its instances may overlap),
so its total grows at most as fast as the wall clock: `rate()` of the counter it feeds,
`encoder_device_busy_seconds_total{model}`, is the share of time the device was busy (1:
never idle between passes). Only `backend.run` counts, not padding, pooling or answering.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType


class BusyClock:
    """A context manager around each pass; `add(seconds)` is told the busy time as it goes
    (at every pass's end, so a long busy stretch of overlapping passes shows before it ends).
    Thread-safe: passes run in executor threads."""

    def __init__(
        self, add: Callable[[float], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._add = add
        self._clock = clock
        self._lock = threading.Lock()
        self._running = 0  # passes in flight now
        self._since = 0.0  # busy time before this instant has been added

    def __enter__(self) -> None:
        with self._lock:
            if self._running == 0:
                self._since = self._clock()
            self._running += 1

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._lock:
            now = self._clock()
            self._add(now - self._since)
            self._since = now
            self._running -= 1
