"""The pass gate: one pass at a time, attention passes yield to queued embedding work."""

from __future__ import annotations

import threading
import time

from app.engine.pass_gate import PassGate


def test_passes_never_overlap() -> None:
    gate = PassGate(lambda: False)
    inside, overlaps = [0], []

    def work(enter) -> None:
        for _ in range(50):
            with enter():
                inside[0] += 1
                overlaps.append(inside[0])
                time.sleep(0.0005)
                inside[0] -= 1

    threads = [threading.Thread(target=work, args=(e,)) for e in (gate.primary, gate.secondary)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(overlaps) == 100 and max(overlaps) == 1


def test_a_secondary_pass_waits_while_primary_work_is_queued() -> None:
    queued = threading.Event()
    queued.set()
    gate = PassGate(queued.is_set, max_defer_s=30)
    events: list[str] = []

    def attention() -> None:
        with gate.secondary():
            events.append("attention")

    thread = threading.Thread(target=attention)
    thread.start()
    for _ in range(3):  # embedding passes keep coming while their queue is not empty
        with gate.primary():
            events.append("embedding")
        time.sleep(0.02)
    events.append("queue empty")
    queued.clear()
    thread.join(10)
    assert events == ["embedding"] * 3 + ["queue empty", "attention"]


def test_a_secondary_pass_is_not_starved() -> None:
    gate = PassGate(lambda: True, max_defer_s=0.05)  # embedding work never runs out
    done = threading.Event()

    def attention() -> None:
        with gate.secondary():
            done.set()

    thread = threading.Thread(target=attention)
    thread.start()
    thread.join(10)
    assert done.is_set()
