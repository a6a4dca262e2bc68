"""Front-end worker processes (ENCODER_WORKERS=2) on a real server: every route, one
metrics view, drain on SIGTERM, and crashed processes replaced."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from tests.conftest import (
    LiveServer,
    metric_sum,
    start_server,
    wait_until_every_request_reached_the_batcher,
    wait_until_not_ready,
)
from tests.deploy.support import require_tool

WORKERS = {"ENCODER_WORKERS": "2", "ENCODER_LOG_FORMAT": "json"}
TEXT = "Two processes answer HTTP, a third runs the model."


def log_records(live: LiveServer) -> list[dict[str, object]]:
    records = []
    for line in live.log().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def pids_logging(live: LiveServer, message: str) -> list[int]:
    return [int(r["pid"]) for r in log_records(live) if str(r["message"]).startswith(message)]  # type: ignore[call-overload]


def wait_for(condition, timeout: float = 60, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def encode_on_fresh_connection(url: str, index: int) -> int:
    # No shared client: each request opens its own connection, which either worker accepts.
    return httpx.post(f"{url}/encode", json={"inputs": f"{index}: {TEXT}"}, timeout=60).status_code


def requests_counted(exposition: str, endpoint: str) -> float:
    return metric_sum(exposition, "encoder_requests_total", f'endpoint="{endpoint}"')


def test_two_workers_serve_every_route_with_one_metrics_view(tmp_path: Path) -> None:
    live = start_server(tmp_path, WORKERS)
    try:
        calls = [
            ("POST", "/encode", {"inputs": [TEXT, "second"]}),
            ("POST", "/classify", {"inputs": "a wonderful, moving film", "model": "sentiment"}),
            ("POST", "/classify", {"inputs": TEXT, "candidate_labels": ["models", "weather"]}),
            ("POST", "/attention", {"inputs": TEXT, "aggregate": "rollout"}),
            ("POST", "/tokenize", {"inputs": TEXT}),
            ("POST", "/v1/embeddings", {"input": TEXT, "model": "minilm"}),
            ("POST", "/embed", {"inputs": TEXT}),
            ("GET", "/models", None),
            ("GET", "/info", None),
            ("GET", "/", None),
            ("GET", "/health", None),
            ("GET", "/ready", None),
        ]
        with live.client() as client:
            for method, path, body in calls:
                response = client.request(method, path, json=body)
                assert response.status_code == 200, (path, response.text)
            classified = client.post("/classify", json={"inputs": "dreadful", "model": "sentiment"})
            assert classified.json()["results"][0][0]["label"] == "negative"

        sent = 64
        with ThreadPoolExecutor(8) as pool:
            statuses = list(
                pool.map(lambda i: encode_on_fresh_connection(live.url, i), range(sent))
            )
        assert statuses == [200] * sent
        answering = {
            int(r["pid"])  # type: ignore[call-overload]
            for r in log_records(live)
            if r.get("endpoint") == "/encode"
        }
        assert len(answering) == 2, f"one worker answered everything: {answering}"

        # Whichever worker answers /metrics, it shows every process's samples, merged.
        expected = sent + 1  # and the /encode of the route check
        scrapes = [httpx.get(f"{live.url}/metrics").text for _ in range(6)]
        for exposition in scrapes:
            assert requests_counted(exposition, "/encode") == expected
            # Counted in the engine process: its batches.
            assert re.search(r'^encoder_batch_size_count\{model="minilm"\} [1-9]', exposition, re.M)
            assert 'encoder_model_info{backend="onnx",model="minilm"' in exposition

        # process_* describe the whole server: CPU and memory of every process, summed.
        supervisor = psutil.Process(live.process.pid)
        processes = [supervisor, *supervisor.children(recursive=True)]
        assert len(processes) >= 4  # supervisor, engine, two workers
        cpu_before = sum(p.cpu_times().user + p.cpu_times().system for p in processes)
        resident = sum(p.memory_info().rss for p in processes)
        exposition = httpx.get(f"{live.url}/metrics").text
        assert metric_sum(exposition, "process_cpu_seconds_total") >= cpu_before
        assert metric_sum(exposition, "process_resident_memory_bytes") >= 0.8 * resident
        assert "python_info{" in exposition
        checked = subprocess.run(
            [require_tool("promtool"), "check", "metrics"],
            input=exposition,
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        assert live.stop() == 0, live.log()[-3000:]


async def test_sigterm_with_two_workers_answers_everything_queued(tmp_path: Path) -> None:
    # One input per pass, so the inputs the engine holds are its queue plus its busy
    # instances: every request is accounted for before SIGTERM.
    live = start_server(
        tmp_path, {**WORKERS, "ENCODER_DRAIN_S": "30", "ENCODER_MAX_BATCH_SIZE": "1"}
    )
    try:
        wait_for(lambda: len(pids_logging(live, "ready: serving")) == 2, what="both workers")
        texts = [
            f"request {i}: " + "a sentence long enough to take a while " * 24 for i in range(64)
        ]
        limits = httpx.Limits(max_connections=80)
        async with (
            httpx.AsyncClient(base_url=live.url, timeout=60, limits=limits) as client,
            httpx.AsyncClient(base_url=live.url, timeout=10) as monitor,
        ):
            pending = [
                asyncio.ensure_future(client.post("/encode", json={"inputs": text}))
                for text in texts
            ]
            await wait_until_every_request_reached_the_batcher(monitor, len(texts))
            live.process.send_signal(signal.SIGTERM)
            await wait_until_not_ready(monitor)
            assert not all(request.done() for request in pending), "drained before the checks"
            refused = await monitor.post("/encode", json={"inputs": "too late"})
            assert refused.status_code == 503
            assert refused.json()["error"]["type"] == "not_ready"
            responses = await asyncio.gather(*pending)
        assert [r.status_code for r in responses] == [200] * len(texts)
        code = await asyncio.to_thread(live.process.wait, 60)
        assert code == 0, live.log()[-3000:]
        assert len(pids_logging(live, "drained")) == 2  # each worker drained
    finally:
        live.stop()


def test_a_killed_worker_or_engine_process_is_replaced(tmp_path: Path) -> None:
    live = start_server(tmp_path, WORKERS)
    try:
        wait_for(lambda: len(pids_logging(live, "ready: serving")) == 2, what="both workers")
        victim = pids_logging(live, "ready: serving")[0]
        os.kill(victim, signal.SIGKILL)
        psutil.Process(victim).wait(10)
        # Requests on fresh connections all the while the replacement starts: it accepts
        # none before it can serve them, so none meets a 503 while its sibling serves.
        statuses = []
        while len(pids_logging(live, "ready: serving")) < 3:
            statuses.append(encode_on_fresh_connection(live.url, len(statuses)))
            assert len(statuses) < 10_000, "no new worker"
        assert victim not in pids_logging(live, "ready: serving")[2:]
        with ThreadPoolExecutor(4) as pool:
            statuses += pool.map(lambda i: encode_on_fresh_connection(live.url, i), range(16))
        assert statuses == [200] * len(statuses)

        cpu_before = metric_sum(httpx.get(f"{live.url}/metrics").text, "process_cpu_seconds_total")
        (engine,) = pids_logging(live, "engine process ready")
        os.kill(engine, signal.SIGKILL)
        reasons: list[str] = []

        def engine_missed() -> bool:
            response = httpx.get(f"{live.url}/ready")
            if response.status_code == 503:
                reasons.append(response.json()["error"]["message"])
            return bool(reasons)

        wait_for(engine_missed, what="/ready to report the engine gone")
        assert "engine process" in reasons[0]
        # The dead engine's CPU seconds (it loaded every model) still count: a counter.
        cpu_after = metric_sum(httpx.get(f"{live.url}/metrics").text, "process_cpu_seconds_total")
        assert cpu_after >= cpu_before > 0
        wait_for(lambda: len(pids_logging(live, "engine process ready")) == 2, what="an engine")
        # Both workers reconnect: /ready answers 200 on fresh connections, whichever accepts.
        wait_for(
            lambda: all(httpx.get(f"{live.url}/ready").status_code == 200 for _ in range(6)),
            what="ready again",
        )
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda i: encode_on_fresh_connection(live.url, i), range(16)))
        assert statuses == [200] * 16
    finally:
        assert live.stop() == 0, live.log()[-3000:]
