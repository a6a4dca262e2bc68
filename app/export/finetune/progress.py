"""`finetune`'s training progress: a tqdm bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import time
from typing import Any

from app.export.messages import message_stream

PLAIN_LOG_LINES = 40  # progress lines over a run when the stream is not a terminal


class TrainingProgress:
    """A tqdm bar (loss, examples/s, ETA) on a terminal; plain log lines otherwise. Lines go
    to `stream`, by default the command's message stream (app/export/messages.py)."""

    def __init__(self, total_steps: int, batch_size: int, *, stream: Any = None) -> None:
        self.stream = stream or message_stream()
        self.total = total_steps
        self.batch_size = batch_size
        self.start = time.perf_counter()
        self.examples = 0
        self.loss: float | None = None
        self.every = max(1, total_steps // PLAIN_LOG_LINES)
        self.bar: Any = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps, unit="step", file=self.stream, dynamic_ncols=True, desc="train"
            )

    def step(self, step: int, examples: int, loss: float) -> None:
        self.examples += examples
        # An exponential average: single batches are too noisy to read.
        self.loss = loss if self.loss is None else 0.95 * self.loss + 0.05 * loss
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.examples / elapsed
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.loss:.4f}", ex_s=f"{rate:.0f}", refresh=False)
            self.bar.update(1)
        elif step % self.every == 0 or step == self.total:
            eta = (self.total - step) * elapsed / step
            self.write(
                f"[train] step {step}/{self.total}: loss {self.loss:.4f}, "
                f"{rate:.0f} examples/s, ETA {eta / 60:.1f} min"
            )

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
