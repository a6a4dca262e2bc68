"""The process model with front-end workers (ENCODER_WORKERS > 1): who runs what.

```
 supervisor (this module)     binds the port, starts and restarts the others, forwards SIGTERM
 ├─ engine process            every model's sessions and batchers (app/engine/transport/server.py)
 └─ N HTTP worker processes   HTTP, validation, tokenization, heads, JSON, request metrics
                              and logs; token ids to the engine and vectors back over a
                              Unix socket (app/engine/transport/client.py)
```

The workers share one listening socket (the kernel hands each connection to one of
them). Every process writes its metrics to files in a private directory that any
worker's `/metrics` merges. A worker or engine process that dies is started again,
after a pause that grows while it keeps dying soon after its start (`_Slot`, `_delay`);
while the engine is down, workers answer 503 and `/ready` says why. Each worker's
`/ready` speaks for all of them: a byte per worker in shared memory says which would
answer (app/worker_board.py); the supervisor clears the byte of one that died. On SIGTERM (or
Ctrl-C) the workers drain first — each finishes what it accepted, the engine still
running — then the engine stops. One worker keeps everything in one process.

Why one file (over 400 lines): it is the supervisor, one job; the helpers beside it (the
runtime directory, exit descriptions, the engine-down note) serve only it, and read whole it
shows every process's start, restart and stop in one place.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from types import FrameType

import psutil

from app.config import Settings
from app.exit_statuses import EXIT_MODELS, EXIT_PORT
from app.runtime_files import ENGINE_DOWN_FILE, ENGINE_ERROR_FILE, write_atomically
from app.worker_board import STOPPED, WorkerBoard

log = logging.getLogger(__name__)

BACKLOG = 2048  # uvicorn's default
# A dead process is restarted after RESTART_DELAY_S, doubled for each death in a row
# soon after a start, up to ENCODER_RESTART_MAX_DELAY_S: a crash loop cannot spin.
RESTART_DELAY_S = 0.5
STOP_GRACE_S = 10.0  # beyond the drain time, before a process that will not stop is killed
# A process that lived HEALTHY_S (the engine: and became ready) had a good start: its
# back-off starts over. HTTP workers that *crash* (exit code > 0: a setting or model they
# cannot load, a broken build) within HEALTHY_S of their start MAX_QUICK_EXITS times in
# a row, every worker alike, stop the server rather than restart forever. Deaths by a
# signal (an OOM killer, an operator's kill) never stop it: they say nothing of the build.
HEALTHY_S = 10.0
MAX_QUICK_EXITS = 5
RUNTIME_PREFIX = "encoder-serve-"
OWNER_FILE = "supervisor.pid"  # `pid create_time` of the supervisor owning a runtime dir


def bind_listener(host: str, port: int) -> socket.socket:
    """The server's listening socket (inheritable: the workers share it); OSError when the
    port is taken or not ours to bind. Bound before any model loads (app/serve_command.py)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family, backlog=BACKLOG)
    listener.set_inheritable(True)
    return listener


def describe_exit(exitcode: int | None) -> str:
    """How a child ended, for the log and /ready: its exit code, or the signal that killed
    it (multiprocessing reports death by signal N as exit code -N)."""
    if exitcode is None:
        return "is gone"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown"
        return f"was killed by signal {-exitcode} ({name})"
    return f"exited with code {exitcode}"


def _owner_line() -> str:
    return f"{os.getpid()} {psutil.Process().create_time()}"


def remove_stale_runtime_dirs(parent: Path) -> None:
    """Remove runtime dirs whose supervisor is gone: one killed with SIGKILL (or by the
    OOM killer along with its children) leaves its dir behind. A dir is stale when the
    process named in its owner file is gone or is another process with that pid."""
    for runtime in parent.glob(f"{RUNTIME_PREFIX}*"):
        try:
            if runtime.stat().st_uid != os.getuid():
                continue
            pid, created = (runtime / OWNER_FILE).read_text().split()
        except (OSError, ValueError):
            continue  # not ours, being created, or of a version without owner files
        try:
            alive = psutil.Process(int(pid)).create_time() == float(created)
        except (psutil.Error, ValueError):
            alive = False
        if not alive:
            log.info("removing %s, left behind by a supervisor that is gone", runtime)
            shutil.rmtree(runtime, ignore_errors=True)


def _follow_parent() -> int:
    """In a child: leave Ctrl-C to the supervisor (which orders the shutdown), and stop
    when the supervisor is gone (killed with SIGKILL, it cannot stop its children).
    Returns the supervisor's pid."""
    os.setpgrp()  # the terminal's SIGINT goes to the supervisor's process group only
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    return parent


def _cleanup_if_orphaned(runtime: Path, parent: int) -> None:
    """Once the supervisor is gone nobody else removes the runtime dir: each child does
    as it exits (stopped by `_follow_parent`'s SIGTERM; the last removal sticks)."""
    if os.getppid() != parent:
        shutil.rmtree(runtime, ignore_errors=True)


def _engine_main(settings: Settings, path: Path, ready: Event) -> None:
    from app.engine.transport.server import run_engine_process

    parent = _follow_parent()
    try:
        run_engine_process(settings, path, ready)
    finally:
        _cleanup_if_orphaned(path.parent, parent)


def _worker_main(
    settings: Settings,
    path: Path,
    metrics_dir: Path,
    listener: socket.socket,
    board: WorkerBoard,
) -> None:
    from app.api.app import create_app
    from app.api.server import serve
    from app.logs import configure_logging

    parent = _follow_parent()
    try:
        configure_logging(settings.log_level, settings.log_format)
        app = create_app(settings, engine_socket=path, metrics_dir=metrics_dir, board=board)
        serve(app.state.server, app, sockets=[listener])
    finally:
        _cleanup_if_orphaned(path.parent, parent)
    if app.state.server.fatal_error is not None:
        sys.exit(1)  # a crash of the program, not a stop: the supervisor tells them apart


@dataclass
class _Slot:
    """One child's place: its process, and its deaths in a row soon after a start."""

    role: str  # "HTTP worker" or "engine"
    index: int = -1  # an HTTP worker's byte on the WorkerBoard
    process: SpawnProcess | None = None
    started_at: float = 0.0
    failures: int = 0  # deaths in a row within HEALTHY_S of a start, by any cause
    crashes: int = 0  # exits with a code > 0 among them, in a row: a broken build
    restart_at: float = 0.0  # when a dead process is started again
    ready: bool = False  # the engine: its models loaded in this life

    def lived_s(self, now: float) -> float:
        return now - self.started_at


class Supervisor:
    """Starts the engine and `workers` HTTP processes, restarts them, stops them in order."""

    def __init__(
        self, settings: Settings, workers: int, listener: socket.socket | None = None
    ) -> None:
        self.settings = settings
        self.workers = workers
        self._listener = listener  # bound already by the command line, before anything loads
        self._context = multiprocessing.get_context("spawn")  # no forked threads or sessions
        remove_stale_runtime_dirs(Path(tempfile.gettempdir()))
        self._runtime = Path(tempfile.mkdtemp(prefix=RUNTIME_PREFIX))
        (self._runtime / OWNER_FILE).write_text(_owner_line())
        self.socket_path = self._runtime / "engine.sock"
        self.metrics_dir = self._runtime / "metrics"
        self.metrics_dir.mkdir()
        self._stopping = False
        self._engine_ready = self._context.Event()
        self._engine_started_once = False
        # Each worker's state, which every worker's /ready reads (app/worker_board.py).
        self.board = WorkerBoard.create(self._context, workers)

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; 4 when the engine process cannot start, 1 when
        every HTTP worker keeps crashing at its start."""
        # Read by prometheus_client when each child imports it: every process writes there.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        try:
            listener = self._listener or bind_listener(self.settings.host, self.settings.port)
        except OSError as error:  # the port is taken, or not ours to bind
            log.error("cannot listen on %s:%d: %s", self.settings.host, self.settings.port, error)
            shutil.rmtree(self._runtime, ignore_errors=True)
            return EXIT_PORT
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        log.info(
            "serving on %s:%d with %d HTTP worker processes and one engine process",
            self.settings.host,
            self.settings.port,
            self.workers,
        )
        engine = _Slot("engine")
        self._start(engine, listener)
        workers = [_Slot("HTTP worker", index=i) for i in range(self.workers)]
        for worker in workers:
            self._start(worker, listener)
        status = 0
        try:
            while not self._stopping:
                slots = (engine, *workers)
                now = time.monotonic()
                wake = min([now + 0.2, *(s.restart_at for s in slots if s.process is None)])
                wait([s.process.sentinel for s in slots if s.process], timeout=max(0, wake - now))
                if self._stopping:
                    break
                if not self._tend_engine(engine, listener):
                    status = EXIT_MODELS  # the engine could not load them
                    break
                for worker in workers:
                    self._tend_worker(worker, listener)
                if all(worker.crashes >= MAX_QUICK_EXITS for worker in workers):
                    log.error(
                        "every HTTP worker crashed within %.0f s of its start %d times in a "
                        "row: stopping; their log lines above say why",
                        HEALTHY_S,
                        MAX_QUICK_EXITS,
                    )
                    status = 1
                    break
        finally:
            self._stop(listener, engine.process, [w.process for w in workers])
        return status

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _tend_engine(self, slot: _Slot, listener: socket.socket) -> bool:
        """Note the engine's readiness, restart it when it died; False: stop the server
        (it crashed at its very first start: a setting or model that cannot load)."""
        now = time.monotonic()
        process = slot.process
        if process is None:
            if now >= slot.restart_at:
                self._start(slot, listener)
            return True
        if self._engine_ready.is_set() and not slot.ready:
            slot.ready = self._engine_started_once = True
            (self._runtime / ENGINE_DOWN_FILE).unlink(missing_ok=True)
        if slot.ready and slot.lived_s(now) >= HEALTHY_S:
            slot.failures = 0
        if process.is_alive():
            return True
        why = describe_exit(process.exitcode)
        error = self._runtime / ENGINE_ERROR_FILE
        with contextlib.suppress(OSError):
            why += f" ({error.read_text().strip()})"  # the engine's own error line
            error.unlink()
        crashed = process.exitcode is not None and process.exitcode > 0
        if crashed and not self._engine_started_once:
            log.error("the engine process failed to start: it %s", why)
            # The one plain line of a start-up failure (app/serve_command.py), beside the log's.
            print(f"encoder-serve: the engine process failed to start: it {why}", file=sys.stderr)
            return False
        delay = self._bury(slot, now, why)
        reason = (
            f"the engine process {why}; {slot.failures} failure(s) in a row, "
            f"restarting it after a {delay:g} s pause"
        )
        with contextlib.suppress(OSError):
            write_atomically(self._runtime / ENGINE_DOWN_FILE, reason)
        return True

    def _tend_worker(self, slot: _Slot, listener: socket.socket) -> None:
        now = time.monotonic()
        process = slot.process
        if process is None:
            if now >= slot.restart_at:
                self._start(slot, listener)
            return
        if process.is_alive():
            if slot.lived_s(now) >= HEALTHY_S:
                slot.failures = slot.crashes = 0
            return
        self._bury(slot, now, describe_exit(process.exitcode))

    def _bury(self, slot: _Slot, now: float, why: str) -> float:
        """A child died: count it, fold its metrics, schedule its restart after the
        delay returned (backed off)."""
        process = slot.process
        assert process is not None
        lived_s = slot.lived_s(now)
        if lived_s >= HEALTHY_S and (slot.ready or slot.role != "engine"):
            slot.failures = slot.crashes = 0  # a good start: this death starts a new count
        slot.failures += 1
        if process.exitcode is not None and process.exitcode > 0:
            slot.crashes += 1  # a death by signal leaves the count of crashes as it was
        delay = self._delay(slot)
        log.error(
            "%s process %s %s, %.1f s after its start; restarting it in %g s",
            slot.role,
            process.pid,
            why,
            lived_s,
            delay,
            extra={
                "child_pid": process.pid,
                "exitcode": process.exitcode,
                "restart_delay_s": delay,
                "failures_in_a_row": slot.failures,
            },
        )
        if process.pid is not None:
            from app.metrics import fold_dead_process

            fold_dead_process(self.metrics_dir, process.pid)
        process.close()
        if slot.role != "engine":
            self.board.mark(STOPPED, slot.index)  # it accepts no more: it holds no one back
        slot.process = None
        slot.ready = False
        slot.restart_at = now + delay
        return delay

    def _delay(self, slot: _Slot) -> float:
        """Exponential back-off: RESTART_DELAY_S doubled per failure in a row, capped."""
        exponent = min(max(slot.failures - 1, 0), 30)
        return min(self.settings.restart_max_delay_s, RESTART_DELAY_S * 2.0**exponent)

    def _start(self, slot: _Slot, listener: socket.socket) -> None:
        if slot.role == "engine":
            self._engine_ready.clear()
            process = self._context.Process(
                target=_engine_main,
                args=(self.settings, self.socket_path, self._engine_ready),
                name="encoder-serve-engine",
            )
        else:
            self.board.mark(STOPPED, slot.index)
            process = self._context.Process(
                target=_worker_main,
                args=(
                    self.settings,
                    self.socket_path,
                    self.metrics_dir,
                    listener,
                    self.board.of_worker(slot.index),
                ),
                name="encoder-serve-worker",
            )
        process.start()
        slot.process = process
        slot.started_at = time.monotonic()

    def _stop(
        self,
        listener: socket.socket,
        engine: SpawnProcess | None,
        workers: list[SpawnProcess | None],
    ) -> None:
        """Workers first (each drains what it accepted while the engine still runs), then
        the engine; whatever ignores SIGTERM past its grace is killed."""
        listener.close()  # the workers hold their own copies until they finish
        grace = self.settings.drain_s * 2 + STOP_GRACE_S  # drain, then connections' answers
        running = [worker for worker in workers if worker is not None]
        for worker in running:
            if worker.is_alive():
                worker.terminate()
        for worker in running:
            _join(worker, grace)
        if engine is not None:
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
