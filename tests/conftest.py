"""Shared fixtures: the default model repository and real server processes on loopback."""

from __future__ import annotations

import asyncio
import atexit
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
# The repository `make models` builds, where a user may add models of their own.
LIVE_MODELS_DIR = ROOT / "models"
# The models the tests are written against: the shipped ones (models/*/model.json in git).
DEFAULT_MODEL_NAMES = ("minilm", "sentiment", "topic")


def models_for_tests(live: Path = LIVE_MODELS_DIR) -> Path:
    """A model repository of the default models only, as links to the live one's model
    directories (nothing is copied): a model a user adds to models/ (`myreviews`, before
    `sentiment` by name) changes neither the defaults nor anything else the tests see.
    Removed when the test run ends."""
    repository = Path(tempfile.mkdtemp(prefix="encoder-serve-test-models-"))
    atexit.register(shutil.rmtree, repository, ignore_errors=True)
    for name in DEFAULT_MODEL_NAMES:
        (repository / name).symlink_to(live / name, target_is_directory=True)
    return repository


# Every test serves from here (start_server, `default_models`), never from models/ itself.
MODELS_DIR = models_for_tests()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """A real `encoder-serve serve` process on a loopback port."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        return stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL if it has not exited within 30 s; its exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def start_server(
    tmp_dir: Path, env: dict[str, str] | None = None, *, wait_ready: bool = True
) -> LiveServer:
    port = free_port()
    log_path = tmp_dir / f"server-{port}.log"
    full_env = {
        **os.environ,
        "ENCODER_MODELS_DIR": str(MODELS_DIR),
        "ENCODER_HOST": "127.0.0.1",
        "ENCODER_PORT": str(port),
        **(env or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve"], env=full_env, stdout=log, stderr=log, cwd=ROOT
        )
    server = LiveServer(process, f"http://127.0.0.1:{port}", log_path)
    if wait_ready:
        wait_until_ready(server)
    return server


def wait_ready(
    get: Callable[[str], httpx.Response],
    timeout: float = 120,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll GET /ready through `get` (an httpx or Starlette test client's) until it is 200.

    Raises RuntimeError after `timeout` s, or at once when `alive` says the server is gone.
    """
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and not alive():
            raise RuntimeError("the server exited before /ready answered 200")
        try:
            status = get("/ready").status_code
        except httpx.TransportError as error:  # a starting server may not listen yet
            status = repr(error)
        if status == 200:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"/ready not 200 within {timeout} s (last answer: {status})")
        time.sleep(0.1)


def wait_until_ready(server: LiveServer, timeout: float = 120) -> None:
    """`wait_ready` for a server process; the error carries its exit status and log."""
    try:
        wait_ready(
            lambda path: httpx.get(f"{server.url}{path}", timeout=2),
            timeout,
            alive=lambda: server.process.poll() is None,
        )
    except RuntimeError as error:
        code = server.stop()
        raise RuntimeError(f"{error}; exit status {code}, log:\n{server.log()}") from None


@pytest.fixture(scope="session")
def default_models() -> Path:
    if not all((MODELS_DIR / name / "model.onnx").is_file() for name in DEFAULT_MODEL_NAMES):
        pytest.fail("the default models are not built: run `make models` (make test does it first)")
    return MODELS_DIR


@pytest.fixture(scope="session")
def server(default_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real server with the default models, shared by the tests that only read from it."""
    live = start_server(tmp_path_factory.mktemp("server"))
    yield live
    live.stop()


def metric_sum(exposition: str, name: str, label: str = "") -> float:
    """The sum of every sample of `name` (whose labels include `label`, when given)."""
    pattern = re.compile(rf"^{name}(?:\{{(.*)\}})? (\S+)$")
    total = 0.0
    for line in exposition.splitlines():
        match = pattern.match(line)
        if match and label in (match.group(1) or ""):
            total += float(match.group(2))
    return total


async def wait_until_every_request_reached_the_batcher(
    monitor: httpx.AsyncClient, requests: int, model: str = "minilm"
) -> None:
    """Until each of `requests` one-input /encode requests is queued, running or answered,
    and some still wait. Needs one input per pass (ENCODER_MAX_BATCH_SIZE=1), so that the
    running inputs are the busy instances; a request sent after SIGTERM would rightly get
    503, so SIGTERM tests wait for this first."""
    deadline = time.monotonic() + 30
    while True:
        metrics = (await monitor.get("/metrics")).text
        queued = metric_sum(metrics, "encoder_queue_depth", f'model="{model}"')
        running = metric_sum(metrics, "encoder_instances_busy", f'model="{model}"')
        answered = metric_sum(metrics, "encoder_requests_total", 'endpoint="/encode"')
        if queued > 0 and queued + running + answered >= requests:
            return
        assert time.monotonic() < deadline, (queued, running, answered)
        await asyncio.sleep(0.01)


async def wait_until_not_ready(monitor: httpx.AsyncClient, timeout_s: float = 5) -> None:
    """Until /ready stops answering 200 (a drain began)."""
    deadline = time.monotonic() + timeout_s
    while (await monitor.get("/ready")).status_code == 200:
        assert time.monotonic() < deadline, f"still ready after {timeout_s} s"
        await asyncio.sleep(0.01)
