"""The server under test: started as users start it, on a free loopback port, always stopped."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from app.metrics import process_tree_usage

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
UNAUTHENTICATED = ("ENCODER_API_KEY", "ENCODER_METRICS_REQUIRE_KEY")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_command() -> list[str]:
    """`encoder-serve serve` from this interpreter's environment, else `python -m app serve`."""
    script = Path(sys.executable).parent / "encoder-serve"
    if script.is_file():
        return [str(script), "serve"]
    return [sys.executable, "-m", "app", "serve"]


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server: its process and, with worker processes
        (ENCODER_WORKERS > 1), the engine and workers it started, all their threads."""
        return process_tree_cpu_seconds(self.process.pid)


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its descendants (0 once it is gone)."""
    usage = process_tree_usage(pid)
    return 0.0 if usage is None else usage.cpu_seconds


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


def wait_ready(
    server: RunningServer, timeout_s: float = READY_TIMEOUT_S, path: str = "/ready"
) -> None:
    """Until `path` answers 200 (another server's probe for a peer: infinity's /health)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"the server exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        with contextlib.suppress(OSError):
            if _get(f"{server.url}{path}", timeout=2)[0] == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready within {timeout_s:.0f} s:\n{server.log_tail()}")


def stop(server: RunningServer) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@contextlib.contextmanager
def running_process(
    command: list[str],
    env: dict[str, str],
    cwd: Path,
    port: int,
    log_path: Path,
    ready_path: str = "/ready",
) -> Iterator[RunningServer]:
    """`command` serving on loopback `port`, ready once `ready_path` answers 200; stopped
    on any exit. Its output goes to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    server = RunningServer(process, f"http://127.0.0.1:{port}", port, log_path)
    try:
        wait_ready(server, path=ready_path)
        yield server
    finally:
        stop(server)


@contextlib.contextmanager
def running_server(env: dict[str, str], log_path: Path) -> Iterator[RunningServer]:
    """A ready server with `env` (ENCODER_PORT is chosen here); stopped on any exit."""
    port = free_port()
    full_env = {**os.environ, **env, "ENCODER_HOST": "127.0.0.1", "ENCODER_PORT": str(port)}
    # The load generators send no credentials: every load test measures a keyless server.
    for name in UNAUTHENTICATED:
        full_env.pop(name, None)
    with running_process(serve_command(), full_env, ROOT, port, log_path) as server:
        yield server


@contextlib.contextmanager
def bench_server(settings: dict[str, str]) -> Iterator[RunningServer]:
    """`running_server` on the repository's models with a quiet log kept in a scratch
    directory: what each point of the front-end and simulated benchmarks starts."""
    env = {"ENCODER_MODELS_DIR": str(ROOT / "models"), "ENCODER_LOG_LEVEL": "warning", **settings}
    with (
        tempfile.TemporaryDirectory() as scratch,
        running_server(env, Path(scratch) / "server.log") as server,
    ):
        yield server


# -- metrics -------------------------------------------------------------------


@dataclass(frozen=True)
class BatchCounters:
    """The batcher's cumulative counters for one model, from /metrics."""

    batches: float  # forward passes
    sequences: float  # inputs in them
    padded_tokens: float
    real_tokens: float  # counted per answered request only
    answered_requests: float  # 200s

    def __sub__(self, other: BatchCounters) -> BatchCounters:
        return BatchCounters(
            self.batches - other.batches,
            self.sequences - other.sequences,
            self.padded_tokens - other.padded_tokens,
            self.real_tokens - other.real_tokens,
            self.answered_requests - other.answered_requests,
        )

    @property
    def mean_batch_size(self) -> float | None:
        return self.sequences / self.batches if self.batches else None

    def padding_share(self, texts_per_request: int) -> float | None:
        """Share of the padded tokens that were padding, over the counted interval.

        The server counts real tokens only for answered requests, but a load generator
        that stops leaves requests whose batch ran anyway (their callers left). Their
        tokens are estimated by the mean of the answered inputs, so the share is not
        inflated by how the run ended. What is left is an error of at most the last batch
        of a load point (a request can be cut off after its tokens were counted).
        """
        answered_inputs = self.answered_requests * texts_per_request
        if not self.padded_tokens or not answered_inputs:
            return None
        real_tokens = self.real_tokens / answered_inputs * self.sequences
        # Batches of one have no padding; the estimate may dip just below zero there.
        return max(0.0, 1 - real_tokens / self.padded_tokens)


COUNTER_SAMPLES = {
    "encoder_batch_size_count": "batches",
    "encoder_batch_size_sum": "sequences",
    "encoder_batch_tokens_sum": "padded_tokens",
    "encoder_tokens_total": "real_tokens",
    "encoder_requests_total:200": "answered_requests",
}
QUEUE_DEPTH = "encoder_queue_depth"


def model_samples(text: str, model: str) -> dict[str, float]:
    """The samples of one model in a Prometheus exposition, by name (`name:code` for
    samples with a status code), summed over their other labels."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            code = sample.labels.get("code")
            key = f"{sample.name}:{code}" if code else sample.name
            values[key] = values.get(key, 0.0) + sample.value
    return values


def parse_batch_counters(text: str, model: str) -> BatchCounters:
    samples = model_samples(text, model)
    return BatchCounters(
        **{field: samples.get(name, 0.0) for name, field in COUNTER_SAMPLES.items()}
    )


def scrape(server: RunningServer) -> str:
    status, body = _get(f"{server.url}/metrics")
    if status != 200:
        raise RuntimeError(f"GET /metrics answered {status}")
    return body.decode()


def batch_counters(server: RunningServer, model: str) -> BatchCounters:
    return parse_batch_counters(scrape(server), model)


def wait_idle(server: RunningServer, model: str, timeout_s: float = 60.0) -> None:
    """Wait until nothing is queued or running and the counters stood still for a moment.

    Requests still in flight when a load generator stops are run anyway; without this
    wait their batches and tokens would count toward the next load point.
    """
    deadline = time.monotonic() + timeout_s
    last: tuple[float, ...] = ()
    while time.monotonic() < deadline:
        samples = model_samples(scrape(server), model)
        # A batch from the queue may run as several forward passes (encoder_batch_size
        # counts passes), and is observed in inference_duration once it has finished:
        # idle is an empty queue and counters that stood still between two scrapes.
        now = (
            samples.get("encoder_batch_size_count", 0.0),
            samples.get("encoder_inference_duration_seconds_count", 0.0),
            samples.get("encoder_tokens_total", 0.0),
        )
        if samples.get(QUEUE_DEPTH, 0.0) == 0 and now == last:
            return
        last = now
        time.sleep(0.25)
    raise RuntimeError(f"the server did not drain its queue within {timeout_s:.0f} s")
