"""Access control, limits, faults and dropped inputs: the server answers every request once."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.config import Settings
from tests.conftest import LiveServer, start_server, wait_ready

INFERENCE = [
    ("POST", "/encode", {"inputs": "x"}),
    ("POST", "/classify", {"inputs": "x", "candidate_labels": ["a", "b"]}),
    ("POST", "/attention", {"inputs": "x"}),
    ("GET", "/models", None),
]


@contextlib.contextmanager
def ready_client(**settings: object) -> Iterator[TestClient]:
    app = create_app(Settings(models=["minilm"], **settings))  # type: ignore[arg-type]
    with TestClient(app) as client:
        wait_ready(client.get)
        yield client


@pytest.fixture(scope="module")
def keyed(default_models: Path) -> Iterator[TestClient]:
    with ready_client(models_dir=default_models, api_key="key-one,key-two") as client:
        yield client


@pytest.mark.parametrize(("method", "path", "body"), INFERENCE)
def test_inference_routes_need_a_valid_key(keyed: TestClient, method, path, body) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "key-one"}):
        response = keyed.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error"]["type"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    for key in ("key-one", "key-two"):
        response = keyed.request(
            method, path, json=body, headers={"authorization": f"Bearer {key}"}
        )
        assert response.status_code == 200, response.text


def test_probes_metrics_and_viewer_stay_open(keyed: TestClient) -> None:
    for path in ("/health", "/ready", "/metrics", "/"):
        assert keyed.get(path).status_code == 200, path


def test_start_up_moves_what_it_loaded_out_of_the_collectors_sight(
    default_models: Path,
) -> None:
    # Full collections that walk every model object stalled the server ~100 ms each.
    gc.unfreeze()
    with ready_client(models_dir=default_models):
        assert gc.get_freeze_count() > 10_000  # models and libraries: ~70,000 objects
    gc.unfreeze()


def test_metrics_can_require_the_key(default_models: Path) -> None:
    with ready_client(models_dir=default_models, api_key="k", metrics_require_key=True) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"authorization": "Bearer k"}).status_code == 200
        assert client.get("/health").status_code == 200


def test_cors_is_off_by_default_and_allows_configured_origins(default_models: Path) -> None:
    origin = {"origin": "https://app.example"}
    with ready_client(models_dir=default_models) as client:
        response = client.post("/encode", json={"inputs": "x"}, headers=origin)
        assert "access-control-allow-origin" not in response.headers
    with ready_client(models_dir=default_models, cors_origins="https://app.example") as client:
        response = client.post("/encode", json={"inputs": "x"}, headers=origin)
        assert response.headers["access-control-allow-origin"] == "https://app.example"


@pytest.fixture(scope="module")
def limited(default_models: Path) -> Iterator[TestClient]:
    with ready_client(
        models_dir=default_models, max_body_bytes=4096, max_input_chars=500
    ) as client:
        yield client


def test_body_over_the_limit_is_413_before_parsing(limited: TestClient) -> None:
    body = b'{"inputs": "' + b"a" * 5000 + b'"}'
    response = limited.post("/encode", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "limit is 4096 bytes" in response.json()["error"]["message"]


def test_chunked_body_over_the_limit_is_413(limited: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": "'
        for _ in range(10):
            yield b"a" * 1000
        yield b'"}'

    response = limited.post(
        "/encode", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


def test_characters_per_input_are_limited_before_tokenizing(limited: TestClient) -> None:
    response = limited.post("/encode", json={"inputs": ["ok", "b" * 501]})
    assert response.status_code == 413
    assert "inputs[1] has 501 characters" in response.json()["error"]["message"]
    assert limited.post("/encode", json={"inputs": "b" * 500}).status_code == 200


def test_real_server_answers_an_oversized_upload_with_413(tmp_path: Path) -> None:
    """The 413 reaches a client that uploads before reading (the body is read and discarded)."""
    live = start_server(tmp_path, {"ENCODER_MODELS": "minilm", "ENCODER_MAX_BODY_BYTES": "65536"})
    try:
        body = b'{"inputs": "' + b"a" * 200_000 + b'"}'
        response = httpx.post(
            f"{live.url}/encode", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 413
        assert response.json()["error"]["type"] == "payload_too_large"
        assert httpx.post(f"{live.url}/encode", json={"inputs": "fine"}).status_code == 200
    finally:
        live.stop()


def test_an_idle_keep_alive_connection_outlives_the_clients_own_expiry(server: LiveServer) -> None:
    """httpx drops idle connections after 5 s; the server must not close them first, or a
    request sent as it closes one fails (uvicorn's default keep-alive was 5 s)."""
    host, port = server.url.removeprefix("http://").split(":")
    request = f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        for attempt in range(2):
            if attempt:
                time.sleep(6)
            connection.sendall(request)
            assert read_response(connection).startswith(b"HTTP/1.1 200"), attempt


def read_response(connection: socket.socket) -> bytes:
    """One whole HTTP/1.1 response with a Content-Length body ("" if the server closed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


# -- faults, deadlines and departed clients (in-process, with a wrapped backend) --------------


class FlakyBackend:
    """The real backend, raising on any batch that holds the poison token; can be slowed."""

    def __init__(self, real, poison_id: int) -> None:
        self.real = real
        self.name, self.device, self.packed = real.name, real.device, real.packed
        self.poison_id = poison_id
        self.batches: list[int] = []  # inputs per forward pass
        self.delay_s = 0.0

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.packed:  # each input's positions start at 0 in its row
            starts = (inputs["position_ids"] == 0) & (inputs["attention_mask"] == 1)
            self.batches.append(int(starts.sum()))
        else:
            self.batches.append(len(inputs["input_ids"]))
        time.sleep(self.delay_s)
        if (inputs["input_ids"] == self.poison_id).any():
            raise RuntimeError("poisoned input")
        return self.real.run(inputs)


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        state = app.state.server
        deadline = time.monotonic() + 60
        while not state.ready:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def flaky_app(
    default_models: Path, instances: int = 1, **settings: object
) -> tuple[FastAPI, list[FlakyBackend]]:
    """The app with every model instance's backend wrapped (one FlakyBackend each)."""
    app = create_app(
        Settings(models_dir=default_models, models=["minilm"], instances=instances, **settings)  # type: ignore[arg-type]
    )
    holder: list[FlakyBackend] = []
    original_load = app.state.server.load

    async def load_and_wrap() -> None:
        await original_load()
        runner = app.state.server.engine.registry.runners["minilm"]
        poison_id = runner.pipeline.tokenize(["xylophone"])[0].ids[1]
        for pipeline in runner.pipelines:
            pipeline.backend = FlakyBackend(pipeline.backend, int(poison_id))
            holder.append(pipeline.backend)

    app.state.server.load = load_and_wrap
    return app, holder


@pytest.mark.parametrize("instances", [1, 2])
async def test_a_poisoned_input_fails_alone_and_the_server_keeps_serving(
    default_models: Path, instances: int
) -> None:
    # The texts are sent twice (the reference, then each alone): without the result cache,
    # so the second time runs passes too, the poisoned input's among them.
    app, holder = flaky_app(default_models, instances, cache_bytes=0)
    texts = [f"an ordinary sentence number {i}" for i in range(12)]
    async with running(app) as client:
        expected = (await client.post("/encode", json={"inputs": texts})).json()["embeddings"]
        assert len(holder) == instances
        for backend in holder:
            backend.batches.clear()
        requests = [client.post("/encode", json={"inputs": text}) for text in texts]
        requests.insert(5, client.post("/encode", json={"inputs": "a xylophone"}))
        responses = await asyncio.gather(*requests)
        poisoned = responses.pop(5)
        assert poisoned.status_code == 500
        assert poisoned.json()["error"]["type"] == "inference_failed"
        for response, vector in zip(responses, expected, strict=True):
            assert response.status_code == 200
            np.testing.assert_allclose(response.json()["embeddings"][0], vector, atol=1e-5)
        passes = [size for backend in holder for size in backend.batches]
        assert max(passes) > 1, "the poisoned input never shared a batch"
        after = await client.post("/encode", json={"inputs": "still serving"})
        assert after.status_code == 200


async def test_deadline_passed_in_the_queue_is_504_without_inference(
    default_models: Path,
) -> None:
    app, holder = flaky_app(default_models, request_timeout_s=0.3)
    async with running(app) as client:
        holder[0].delay_s = 0.6
        holder[0].batches.clear()
        slow = asyncio.ensure_future(client.post("/encode", json={"inputs": "first"}))
        await asyncio.sleep(0.05)
        late = await client.post("/encode", json={"inputs": "second"})
        assert late.status_code == 504
        assert late.json()["error"]["type"] == "deadline_exceeded"
        assert (await slow).status_code == 504  # its pass outlived the deadline too
        holder[0].delay_s = 0.0
        dropped = 'encoder_rejected_total{model="minilm",reason="deadline"} 1.0'
        deadline = time.monotonic() + 10
        while dropped not in (await client.get("/metrics")).text:
            assert time.monotonic() < deadline, "the expired input was not dropped"
            await asyncio.sleep(0.05)
        assert holder[0].batches == [1], "the expired input must not reach the backend"


def test_a_client_that_disconnects_has_its_queued_inputs_dropped(server: LiveServer) -> None:
    def sample(series: str) -> float:
        """The series' value; 0 before it exists (a histogram appears at its first pass)."""
        text = httpx.get(f"{server.url}/metrics").text
        lines = [line for line in text.splitlines() if line.startswith(series)]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

    def rejected() -> float:
        return sample('encoder_rejected_total{model="minilm",reason="cancelled"}')

    before = rejected()
    passes_before = sample('encoder_batch_size_count{model="minilm"}')
    long_texts = [f"{i} " + "a long input to keep the model busy " * 40 for i in range(64)]
    host, port = server.url.removeprefix("http://").split(":")
    with httpx.Client(base_url=server.url, timeout=120) as client:
        busy = client.build_request("POST", "/encode", json={"inputs": long_texts})
        body = b'{"inputs": "this client will hang up"}'
        with socket.create_connection((host, int(port))) as sock:
            # Occupy the worker first, then queue one input and hang up before its answer.
            import threading

            worker = threading.Thread(target=client.send, args=(busy,))
            worker.start()
            # Until its batch is in the forward pass (a fixed sleep was too short on a
            # loaded machine): the hung-up input then waits for that long batch.
            deadline = time.monotonic() + 30
            while sample('encoder_batch_size_count{model="minilm"}') == passes_before:
                assert time.monotonic() < deadline, "the long request never ran"
                time.sleep(0.01)
            sock.sendall(
                b"POST /encode HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.2)
        worker.join(120)
    deadline = time.monotonic() + 30
    while rejected() <= before:
        assert time.monotonic() < deadline, "the departed client's input was not dropped"
        time.sleep(0.1)
