"""Timing headers, request ids, JSON request logs and the full metric set, on a real server."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import LiveServer

CONTRACT_METRICS = [
    "encoder_requests_total",
    "encoder_request_duration_seconds",
    "encoder_queue_wait_seconds",
    "encoder_inference_duration_seconds",
    "encoder_batch_size",
    "encoder_batch_tokens",
    "encoder_queue_depth",
    "encoder_tokens_total",
    "encoder_rejected_total",
    "encoder_model_info",
]


def test_timing_headers_and_generated_request_id(server: LiveServer) -> None:
    with server.client() as client:
        response = client.post("/encode", json={"inputs": ["timing", "headers"]})
    assert response.status_code == 200
    headers = response.headers
    queue, inference, total = (
        float(headers[name]) for name in ("x-queue-time", "x-inference-time", "x-total-time")
    )
    assert 0 <= queue <= total and 0 < inference <= total
    assert len(headers["x-request-id"]) == 32


def test_client_request_id_is_echoed_and_unsafe_ones_replaced(server: LiveServer) -> None:
    with server.client() as client:
        echoed = client.post(
            "/encode", json={"inputs": "x"}, headers={"x-request-id": "client-42.a:b"}
        )
        unsafe = client.post(
            "/encode", json={"inputs": "x"}, headers={"x-request-id": "bad id\twith spaces"}
        )
        error = client.post("/encode", json={"inputs": []}, headers={"x-request-id": "err-1"})
    assert echoed.headers["x-request-id"] == "client-42.a:b"
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"
    assert error.status_code == 422 and error.headers["x-request-id"] == "err-1"


def find_log_line(server: LiveServer, request_id: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in server.log().splitlines():
            if request_id in line:
                return json.loads(line)
        time.sleep(0.05)
    pytest.fail(f"no log line for request {request_id}:\n{server.log()[-2000:]}")


def test_one_json_log_line_per_request_with_its_request_id(server: LiveServer) -> None:
    with server.client() as client:
        response = client.post(
            "/encode", json={"inputs": ["one", "two", "three"]}, headers={"x-request-id": "log-1"}
        )
    entry = find_log_line(server, "log-1")
    assert entry["request_id"] == response.headers["x-request-id"] == "log-1"
    assert entry["endpoint"] == "/encode" and entry["model"] == "minilm"
    assert entry["status"] == 200 and entry["inputs"] == 3
    assert entry["tokens"] == response.json()["usage"]["tokens"]
    assert entry["total_ms"] >= entry["inference_ms"] > 0
    # Every line the server writes is JSON (no doubled uvicorn access lines either).
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert all(json.loads(line) for line in lines)
    assert sum('"log-1"' in line for line in lines) == 1


def test_every_contract_metric_is_exported(server: LiveServer) -> None:
    with server.client() as client:
        client.post("/encode", json={"inputs": "metrics"})
        text = client.get("/metrics").text
    names = {line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE")}
    exported = set()
    for name in names:
        exported |= {name, f"{name}_total"}
    missing = [m for m in CONTRACT_METRICS if m not in exported]
    assert not missing, missing
    assert (
        'encoder_model_info{backend="onnx",model="minilm",precision="fp32",task="embedding"} 1.0'
        in text
    )
    assert 'encoder_rejected_total{model="minilm",reason="queue_full"}' in text
    assert "process_cpu_seconds_total" in text
