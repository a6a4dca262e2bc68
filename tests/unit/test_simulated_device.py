"""The simulated accelerator (ENCODER_BACKEND=benchmark-sim) and the device duty cycle's
clock: a pass waits without a core, and overlapping passes count once."""

from __future__ import annotations

import time

import numpy as np

from app.backends.fixed import SimulatedBackend
from app.config import Settings
from app.engine.passes.busy import BusyClock


def batch(rows: int, tokens: int) -> dict[str, np.ndarray]:
    ids = np.ones((rows, tokens), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": ids, "token_type_ids": np.zeros_like(ids)}


def test_a_simulated_pass_waits_its_time_without_a_core() -> None:
    backend = SimulatedBackend("last_hidden_state", 384, pass_us=150_000, token_us=100)
    inputs = batch(4, 250)  # 1,000 padded tokens: 0.15 s + 0.1 s
    assert backend.pass_seconds(1000) == 0.25
    wall, cpu = time.perf_counter(), time.thread_time()
    outputs = backend.run(inputs)
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    assert outputs["last_hidden_state"].shape == (4, 250, 384)
    assert wall >= 0.25  # a sleep never ends early
    assert cpu < wall / 5, (cpu, wall)  # the pass thread held no core while it waited


def test_defaults_are_the_h200_calibration() -> None:
    settings = Settings()
    assert (settings.sim_pass_us, settings.sim_token_us) == (1000.0, 0.34)
    backend = SimulatedBackend("last_hidden_state", 384, pass_us=1000.0, token_us=0.34)
    # Batch 512 of the H200 report's texts (~48 padded tokens each): ~9.35 ms a pass, so
    # ~54,800 sequences/s forward-only, the report's 54,762.
    assert 54_000 < 512 / backend.pass_seconds(512 * 48) < 55_500


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_busy_clock_counts_overlapping_passes_once() -> None:
    clock, added = FakeClock(), []
    busy = BusyClock(added.append, clock)
    with busy:  # 100 → 101: one pass
        clock.now = 101.0
    clock.now = 105.0  # idle 4 s: not counted
    first = busy.__enter__()  # two instances overlap 105 → 108
    clock.now = 106.0
    busy.__enter__()
    clock.now = 107.0
    busy.__exit__(None, None, None)
    clock.now = 108.0
    busy.__exit__(None, None, None)
    assert first is None
    assert sum(added) == 1.0 + 3.0  # the union, not 1 + 3 + 1
    assert added == [1.0, 2.0, 1.0]  # told at every pass's end
