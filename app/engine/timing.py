"""Per-request accounting (queue and inference time, inputs, tokens) for headers and logs.

The HTTP edge opens a `RequestTiming` for each request in a context variable; the
engine adds to it from the same task without knowing about HTTP.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


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


def record_timing(queue_s: float, inference_s: float, inputs: int, tokens: int) -> None:
    """Add one engine call's queue and inference time to the current request's account."""
    timing = current_timing.get()
    if timing is not None:
        timing.record(queue_s, inference_s, inputs, tokens)
