"""Per-request accounting (queue and inference time, inputs, tokens) for headers and logs.

The HTTP edge opens a `RequestTiming` for each request in a context variable; the
engine adds to it from the same task without knowing about HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the batcher records into this module; only its type is needed here
    from app.engine.batcher import QueuedInput


@dataclass
class RequestTiming:
    queue_s: float = 0.0  # longest wait of any of the request's inputs
    inference_s: float = 0.0  # longest forward pass any of its inputs rode in
    inputs: int = 0
    tokens: int = 0

    def record(self, queue_s: float, inference_s: float, inputs: int, tokens: int) -> None:
        # The request waits for its slowest input, so the maxima are what it experienced.
        self.queue_s = max(self.queue_s, queue_s)
        self.inference_s = max(self.inference_s, inference_s)
        self.inputs += inputs
        self.tokens += tokens


current_timing: ContextVar[RequestTiming | None] = ContextVar("current_timing", default=None)


def record_timing(queued: Sequence[QueuedInput[Any, Any]], tokens: int) -> None:
    """Add this call's queue and inference time to the current request's account."""
    timing = current_timing.get()
    if timing is None:
        return
    queue_s = inference_s = 0.0
    for item in queued:
        if item.started_at is not None and item.finished_at is not None:
            queue_s = max(queue_s, item.started_at - item.enqueued_at)
            inference_s = max(inference_s, item.finished_at - item.started_at)
    timing.record(queue_s, inference_s, len(queued), tokens)
