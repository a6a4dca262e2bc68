"""The workers' board: one shared byte per worker, written in one process, read in another."""

from __future__ import annotations

import multiprocessing

from app.worker_board import SERVING, STOPPED, WAITING, WorkerBoard


def _mark_in_child(board: WorkerBoard, state: int) -> None:
    board.mark(state)


def test_a_byte_marked_in_a_spawned_worker_is_read_by_its_siblings() -> None:
    context = multiprocessing.get_context("spawn")  # as the supervisor starts workers
    board = WorkerBoard.create(context, 3)
    assert list(board.cells) == [STOPPED] * 3 and board.describe_waiting() is None
    child = context.Process(target=_mark_in_child, args=(board.of_worker(1), WAITING))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    sibling = board.of_worker(0)
    assert sibling.waiting() == [2]  # counted from 1, as the message says
    reason = sibling.describe_waiting()
    assert reason is not None and reason.startswith("HTTP worker 2 of 3 accepts connections")
    sibling.mark(SERVING)
    board.mark(SERVING, 1)  # the supervisor's view marks any worker
    assert board.waiting() == [] and list(board.cells) == [SERVING, SERVING, STOPPED]
    board.mark(STOPPED, 1)  # died: it holds no one back
    assert board.describe_waiting() is None
