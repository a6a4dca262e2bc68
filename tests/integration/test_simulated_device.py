"""The simulated accelerator on a live server, and the device duty cycle metric
(`encoder_device_busy_seconds_total{model}`) growing while passes run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import metric_sum, start_server

BUSY = "encoder_device_busy_seconds_total"
MINILM = 'model="minilm"'


def busy_seconds(url: str) -> float:
    return metric_sum(httpx.get(f"{url}/metrics").text, BUSY, MINILM)


def encode(url: str, index: int) -> int:
    body = {"inputs": f"request {index}: the simulated device waits for its time"}
    return httpx.post(f"{url}/encode", json=body, timeout=60).status_code


def test_benchmark_sim_serves_and_the_duty_cycle_grows(tmp_path: Path) -> None:
    # Passes of 20 ms each: 8 requests keep the device busy at least 20 ms in all.
    env = {
        "ENCODER_BACKEND": "benchmark-sim",
        "ENCODER_SIM_PASS_US": "20000",
        "ENCODER_SIM_TOKEN_US": "1",
        "ENCODER_MODELS": "minilm",
    }
    live = start_server(tmp_path, env)
    try:
        models = httpx.get(f"{live.url}/models").json()["models"]
        assert [(m["backend"], m["device"]) for m in models] == [("benchmark-sim", "sim")]
        exposition = httpx.get(f"{live.url}/metrics").text
        assert f"{BUSY}{{{MINILM}}} " in exposition  # exported from the start (warm-up unseen)
        assert busy_seconds(live.url) == 0.0
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda i: encode(live.url, i), range(8))) == {200}
        busy = busy_seconds(live.url)
        passes = metric_sum(httpx.get(f"{live.url}/metrics").text, "encoder_batch_size_count")
        assert busy >= 0.02 * passes > 0  # each pass waited at least its 20 ms
        assert "benchmark-sim" in live.log()  # logged at start
    finally:
        live.stop()


def test_the_duty_cycle_adds_up_across_worker_processes(tmp_path: Path) -> None:
    env = {
        "ENCODER_BACKEND": "benchmark-sim",
        "ENCODER_SIM_PASS_US": "20000",
        "ENCODER_MODELS": "minilm",
        "ENCODER_WORKERS": "2",
    }
    live = start_server(tmp_path, env)
    try:
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda i: encode(live.url, i), range(8))) == {200}
        assert busy_seconds(live.url) >= 0.02  # the engine process's counter, merged
    finally:
        live.stop()
