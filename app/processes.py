"""The process model with front-end workers (ENCODER_WORKERS > 1): who runs what.

```
 supervisor (this module)     binds the port, starts and restarts the others, forwards SIGTERM
 ├─ engine process            every model's sessions and batchers (app/engine/service.py)
 └─ N HTTP worker processes   HTTP, validation, tokenization, heads, JSON, request metrics
                              and logs; token ids to the engine and vectors back over a
                              Unix socket (app/engine/remote.py)
```

The workers share one listening socket (the kernel hands each connection to one of
them). Every process writes its metrics to files in a private directory that any
worker's `/metrics` merges. A worker or engine process that dies is started again;
while the engine is down, workers answer 503 and `/ready` says why. On SIGTERM (or
Ctrl-C) the workers drain first — each finishes what it accepted, the engine still
running — then the engine stops. One worker keeps everything in one process.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from multiprocessing.connection import wait
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from types import FrameType

from app.config import Settings, available_cores

log = logging.getLogger(__name__)

BACKLOG = 2048  # uvicorn's default
RESTART_DELAY_S = 0.5  # between a crash and the restart, so a crash loop cannot spin
STOP_GRACE_S = 10.0  # beyond the drain time, before a process that will not stop is killed
# HTTP workers that die within QUICK_EXIT_S of their start MAX_QUICK_EXITS times in a row
# (a setting or model they cannot load) stop the server rather than restart forever.
QUICK_EXIT_S = 10.0
MAX_QUICK_EXITS = 5


def worker_count(setting: int | str, cores: int | None = None) -> int:
    """ENCODER_WORKERS: a number, or `auto` — one HTTP process per 4 cores the server
    may use, at least one (so 1 on the 2-core machine, where the passes need both cores:
    see README "Workers and instances" for the figures), at most 8."""
    if setting != "auto":
        return int(setting)
    cores = cores or available_cores()
    return max(1, min(8, cores // 4))


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family, backlog=BACKLOG)
    listener.set_inheritable(True)
    return listener


def _follow_parent() -> None:
    """In a child: leave Ctrl-C to the supervisor (which orders the shutdown), and stop
    when the supervisor is gone (killed with SIGKILL, it cannot stop its children)."""
    os.setpgrp()  # the terminal's SIGINT goes to the supervisor's process group only
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _engine_main(settings: Settings, path: Path, ready: Event) -> None:
    from app.engine.service import run_engine_process

    _follow_parent()
    run_engine_process(settings, path, ready)


def _worker_main(
    settings: Settings, path: Path, metrics_dir: Path, listener: socket.socket
) -> None:
    from app.api.app import create_app
    from app.api.server import serve
    from app.logs import configure_logging

    _follow_parent()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings, engine_socket=path, metrics_dir=metrics_dir)
    serve(app.state.server, app, sockets=[listener])


class Supervisor:
    """Starts the engine and `workers` HTTP processes, restarts them, stops them in order."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")  # no forked threads or sessions
        self._runtime = Path(tempfile.mkdtemp(prefix="encoder-serve-"))
        self.socket_path = self._runtime / "engine.sock"
        self.metrics_dir = self._runtime / "metrics"
        self.metrics_dir.mkdir()
        self._stopping = False
        self._engine_ready = self._context.Event()
        self._engine_started_once = False
        self._started_at: dict[int | None, float] = {}  # worker pid -> when it was started
        self._quick_exits = 0  # workers in a row that died soon after their start

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; 1 when the engine process cannot start."""
        # Read by prometheus_client when each child imports it: every process writes there.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        try:
            listener = _bind(self.settings.host, self.settings.port)
        except OSError as error:  # the port is taken, or not ours to bind
            log.error("cannot listen on %s:%d: %s", self.settings.host, self.settings.port, error)
            shutil.rmtree(self._runtime, ignore_errors=True)
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        log.info(
            "serving on %s:%d with %d HTTP worker processes and one engine process",
            self.settings.host,
            self.settings.port,
            self.workers,
        )
        engine = self._start_engine()
        workers = [self._start_worker(listener) for _ in range(self.workers)]
        status = 0
        try:
            while not self._stopping:
                wait([engine.sentinel, *(worker.sentinel for worker in workers)], timeout=0.2)
                if self._engine_ready.is_set():
                    self._engine_started_once = True
                if self._stopping:
                    break
                if not engine.is_alive():
                    if not self._engine_started_once:
                        log.error(
                            "the engine process failed to start (exit code %s)", engine.exitcode
                        )
                        status = 1
                        break
                    self._forget(engine, "engine")
                    engine = self._start_engine()
                for index, worker in enumerate(workers):
                    if not worker.is_alive():
                        lived_s = time.monotonic() - self._started_at.pop(worker.pid, 0.0)
                        self._quick_exits = self._quick_exits + 1 if lived_s < QUICK_EXIT_S else 0
                        self._forget(worker, "HTTP worker")
                        workers[index] = self._start_worker(listener)
                if self._quick_exits >= MAX_QUICK_EXITS:
                    log.error(
                        "HTTP workers keep exiting within %.0f s of their start (%d in a row): "
                        "stopping; their log lines above say why",
                        QUICK_EXIT_S,
                        self._quick_exits,
                    )
                    status = 1
                    break
        finally:
            self._stop(listener, engine, workers)
        return status

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _start_engine(self) -> SpawnProcess:
        self._engine_ready.clear()
        process = self._context.Process(
            target=_engine_main,
            args=(self.settings, self.socket_path, self._engine_ready),
            name="encoder-serve-engine",
        )
        process.start()
        return process

    def _start_worker(self, listener: socket.socket) -> SpawnProcess:
        process = self._context.Process(
            target=_worker_main,
            args=(self.settings, self.socket_path, self.metrics_dir, listener),
            name="encoder-serve-worker",
        )
        process.start()
        self._started_at[process.pid] = time.monotonic()
        return process

    def _forget(self, process: SpawnProcess, role: str) -> None:
        """A child died: drop its live gauges, say so, pause before it is replaced."""
        from prometheus_client import multiprocess

        log.error(
            "%s process %s exited (code %s); restarting it", role, process.pid, process.exitcode
        )
        if process.pid is not None:
            multiprocess.mark_process_dead(process.pid, str(self.metrics_dir))
        time.sleep(RESTART_DELAY_S)

    def _stop(
        self, listener: socket.socket, engine: SpawnProcess, workers: list[SpawnProcess]
    ) -> None:
        """Workers first (each drains what it accepted while the engine still runs), then
        the engine; whatever ignores SIGTERM past its grace is killed."""
        listener.close()  # the workers hold their own copies until they finish
        grace = self.settings.drain_s * 2 + STOP_GRACE_S  # drain, then connections' answers
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        for worker in workers:
            _join(worker, grace)
        if engine.is_alive():
            engine.terminate()
        _join(engine, self.settings.drain_s + STOP_GRACE_S)
        shutil.rmtree(self._runtime, ignore_errors=True)
        log.info("stopped")


def _join(process: SpawnProcess, timeout_s: float) -> None:
    process.join(timeout_s)
    if process.is_alive():
        log.error("process %s did not stop within %g s; killing it", process.pid, timeout_s)
        process.kill()
        with contextlib.suppress(Exception):
            process.join(5.0)
