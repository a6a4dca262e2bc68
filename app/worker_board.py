"""Which front-end workers would answer a request now: one shared byte per worker.

With several workers (app/processes.py) the kernel hands each new connection to any of
them, so one worker's `/ready` must speak for all: a 200 from a worker whose sibling is
still loading (or already draining) sent the next request to a 503. Each worker writes
its own byte, the supervisor clears the byte of a worker that died, and every worker's
`/ready` reads all of them. Shared memory, not files: `/ready` reads it without a system
call, and a byte is written whole.

Apart from app/processes.py so that the workers reach it without importing the
supervisor (which imports them: an import circle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# A worker's byte. STOPPED: not accepting connections (before it accepts, or dead), so
# it answers nothing and holds no one back. WAITING: accepting, but it would answer 503
# (its part still loading, or draining). SERVING: it would answer.
STOPPED, WAITING, SERVING = 0, 1, 2


@dataclass
class WorkerBoard:
    """The bytes of every worker, and which one is this process's (`index`; -1 in the
    supervisor). Passed to each worker when it is spawned (shared memory is inherited)."""

    cells: Any  # multiprocessing RawArray of signed bytes, one per worker
    index: int = -1

    @classmethod
    def create(cls, context: Any, workers: int) -> WorkerBoard:
        """A board of `workers` STOPPED bytes, from a multiprocessing `context`."""
        return cls(context.RawArray("b", workers))

    def of_worker(self, index: int) -> WorkerBoard:
        return WorkerBoard(self.cells, index)

    def mark(self, state: int, index: int | None = None) -> None:
        """Set this worker's byte (or worker `index`'s, from the supervisor)."""
        self.cells[self.index if index is None else index] = state

    def waiting(self) -> list[int]:
        """Workers (counted from 1) that accept connections but would answer 503."""
        return [i + 1 for i, state in enumerate(self.cells) if state == WAITING]

    def describe_waiting(self) -> str | None:
        """Why `/ready` says 503 although this worker could serve; None: every worker can."""
        waiting = self.waiting()
        if not waiting:
            return None
        which = ", ".join(str(i) for i in waiting)
        return (
            f"HTTP worker {which} of {len(self.cells)} accepts connections but would answer "
            "503 (its part still loading, or draining)"
        )
