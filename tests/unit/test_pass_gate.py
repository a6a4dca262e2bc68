"""The pass gate: one pass at a time, attention passes yield to queued embedding work."""

from __future__ import annotations

import threading
import time

from app.engine.batching.pass_gate import PassGate


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


def test_embedding_passes_of_several_instances_run_side_by_side_and_attention_still_runs() -> None:
    gate = PassGate(lambda: True, max_defer_s=0.05)  # embedding work never runs out
    both_inside = threading.Event()
    inside = [0]
    stop = threading.Event()
    lock = threading.Lock()

    def embedding() -> None:
        while not stop.is_set():
            with gate.primary():
                with lock:
                    inside[0] += 1
                    if inside[0] == 2:
                        both_inside.set()
                time.sleep(0.002)
                with lock:
                    inside[0] -= 1

    instances = [threading.Thread(target=embedding) for _ in range(2)]
    for thread in instances:
        thread.start()
    assert both_inside.wait(10)  # two instances' passes overlapped
    attention_saw: list[int] = []
    with gate.secondary():  # not starved by passes that keep overlapping
        attention_saw.append(inside[0])
    stop.set()
    for thread in instances:
        thread.join(10)
    assert attention_saw == [0]  # it ran alone
