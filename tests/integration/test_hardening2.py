"""Issue #15's smaller holes: 500s answered inside the observability middleware (headers,
metrics, one logged traceback, keep-alive), HEAD probes, one-line text logs, refused
API key values."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from starlette.responses import StreamingResponse

from app.api.app import create_app
from app.config import Settings
from tests.conftest import ROOT, free_port, start_server, wait_ready

TIMING_HEADERS = ("x-request-id", "x-queue-time", "x-inference-time", "x-total-time")


async def boom() -> None:
    raise RuntimeError("boom: a bug in a route")


async def half_answer() -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"partial": '
        raise RuntimeError("boom: a bug after the answer started")

    return StreamingResponse(chunks(), media_type="application/json")


@contextlib.contextmanager
def threaded_server(app: FastAPI) -> Iterator[tuple[str, int]]:
    """A real uvicorn serving `app` in a thread (as the CLI configures it: no log config)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            timeout_keep_alive=75,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_ready(lambda path: httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2))
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def live(default_models: Path) -> Iterator[tuple[FastAPI, str, int]]:
    app = create_app(Settings(models_dir=default_models, models=["minilm"], warmup=False))
    app.add_api_route("/boom", boom, methods=["GET", "POST"])
    app.add_api_route("/v1/boom", boom, methods=["POST"])
    app.add_api_route("/half", half_answer, methods=["GET"])
    with threaded_server(app) as (host, port):
        yield app, host, port


def read_head(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """A response's status and headers, and what came after them; status 0 if it closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return 0, {}, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = (line.partition(":") for line in lines)
    headers = {name.lower(): value.strip() for name, _, value in fields}
    return int(status_line.split()[1]), headers, rest


def read_response(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body."""
    status, headers, body = read_head(connection)
    while len(body) < int(headers.get("content-length", 0)):
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def requests_counted(app: FastAPI, endpoint: str, code: str) -> float:
    registry = app.state.server.metrics.registry
    labels = {"endpoint": endpoint, "model": "", "code": code}
    return registry.get_sample_value("encoder_requests_total", labels) or 0.0


def test_a_500_keeps_its_headers_and_the_connection(
    live: tuple[FastAPI, str, int], caplog: pytest.LogCaptureFixture
) -> None:
    app, host, port = live
    before = requests_counted(app, "/boom", "500")
    caplog.set_level(logging.INFO)
    with socket.create_connection((host, port), timeout=10) as connection:
        request = f"GET /boom HTTP/1.1\r\nHost: {host}\r\nx-request-id: boom-1\r\n\r\n"
        connection.sendall(request.encode())
        status, headers, body = read_response(connection)
        assert status == 500
        assert httpx.Response(500, content=body).json() == {
            "error": {"type": "internal_error", "message": "internal server error (this is a bug)"}
        }
        assert all(name in headers for name in TIMING_HEADERS), headers
        assert headers["x-request-id"] == "boom-1"
        assert headers.get("connection", "").lower() != "close"
        # The same socket answers the next request: uvicorn did not close it.
        connection.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        status, headers, body = read_response(connection)
        assert status == 200, "the connection was closed after the 500"
        assert headers["content-type"] == "application/json"
    assert requests_counted(app, "/boom", "500") == before + 1
    # Logged once, with its traceback and request id; uvicorn saw no exception.
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]
    assert tracebacks[0].getMessage() == "unhandled error on GET /boom"
    assert getattr(tracebacks[0], "request_id", None) == "boom-1"
    assert not [r for r in caplog.records if r.name == "uvicorn.error"]
    lines = [r for r in caplog.records if getattr(r, "status", None) == 500]
    assert [r.getMessage() for r in lines] == ["GET /boom 500"]


def test_a_500_on_an_openai_route_has_openais_shape_on_a_pooled_connection(
    live: tuple[FastAPI, str, int],
) -> None:
    _, host, port = live
    with httpx.Client(base_url=f"http://{host}:{port}", timeout=10) as client:
        failed = client.post("/v1/boom", json={"input": "x"})
        assert failed.status_code == 500
        assert failed.json() == {
            "error": {
                "message": "internal server error (this is a bug)",
                "type": "server_error",
                "param": None,
                "code": "internal_error",
            }
        }
        assert all(name in failed.headers for name in TIMING_HEADERS)
        assert client.get("/health").status_code == 200
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert len(pool.connections) == 1  # the 500's connection served the second request


def test_an_error_after_the_answer_started_closes_the_connection(
    live: tuple[FastAPI, str, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, host, port = live
    caplog.set_level(logging.INFO)
    with httpx.Client(base_url=f"http://{host}:{port}", timeout=10) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/half")
        assert client.get("/health").status_code == 200  # on a new connection
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert [r.getMessage() for r in tracebacks] == ["unhandled error on GET /half"]


def test_head_probes_answer_like_get_without_a_body(live: tuple[FastAPI, str, int]) -> None:
    app, host, port = live
    with socket.create_connection((host, port), timeout=10) as connection:

        def head(path: str) -> tuple[int, dict[str, str]]:
            connection.sendall(f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            status, headers, rest = read_head(connection)
            assert rest == b"", "a HEAD answer came with a body"
            return status, headers

        for path in ("/health", "/ready"):
            status, headers = head(path)
            assert status == 200, path
            assert headers["content-type"] == "application/json"
            body = httpx.get(f"http://{host}:{port}{path}").content
            assert int(headers["content-length"]) == len(body)
        state = app.state.server
        state.draining = True  # not ready: /ready is 503, /health still 200
        try:
            assert head("/ready")[0] == 503
            assert head("/health")[0] == 200
            assert httpx.get(f"http://{host}:{port}/ready").status_code == 503
        finally:
            state.draining = False
        # No body came with any HEAD answer: the socket holds nothing more.
        connection.settimeout(0.3)
        with pytest.raises(TimeoutError):
            connection.recv(1)


def test_a_request_path_cannot_forge_a_text_log_line(tmp_path: Path, default_models: Path) -> None:
    server = start_server(
        tmp_path,
        {"ENCODER_LOG_FORMAT": "text", "ENCODER_MODELS": "minilm", "ENCODER_WARMUP": "false"},
    )
    try:
        forged = "2026-01-01 00:00:00,000 INFO encoder_serve.requests: GET /encode 200"
        path = "/encode%0A" + forged.replace(" ", "%20") + "%0D%E2%80%A8%C2%85%1B"
        response = httpx.get(f"{server.url}{path}", headers={"x-request-id": "forge-1"})
        assert response.status_code == 404
    finally:
        server.stop()
    lines = server.log().splitlines()
    assert not [line for line in lines if line.startswith("2026-01-01")], lines
    request_lines = [line for line in lines if "request_id=forge-1" in line]
    assert len(request_lines) == 1, lines
    assert f"GET /encode\\n{forged}\\r\\u2028\\x85\\x1b 404 " in request_lines[0]


def run_serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (" , ", "ENCODER_API_KEY is set but holds no key"),
        ("sekrit-1,sekrit 2", "ENCODER_API_KEY: key 2 of 2 contains whitespace"),
    ],
)
def test_serve_refuses_an_api_key_value_that_would_open_or_break_the_api(
    value: str, message: str
) -> None:
    started = time.monotonic()
    result = run_serve({"ENCODER_API_KEY": value})
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "sekrit" not in result.stderr + result.stdout  # keys are never echoed
    assert time.monotonic() - started < 60  # refused at once, before loading models
