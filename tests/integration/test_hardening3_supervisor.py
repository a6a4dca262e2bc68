"""Hardening 3, the supervisor of ENCODER_WORKERS > 1 (issue 28, classes 3, 9 and 15): a
worker killed by a signal is not a broken build, restarts back off, an engine that fails
at every start says why in /ready, dead processes' metric files do not pile up, and the
runtime directory does not outlive a supervisor killed with SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import psutil
import pytest

from app.config import Settings
from app.processes import MAX_QUICK_EXITS, Supervisor, _Slot
from tests.conftest import MODELS_DIR, LiveServer, metric_sum, start_server

WORKERS = {"ENCODER_WORKERS": "2", "ENCODER_LOG_FORMAT": "json"}
FAST_RESTARTS = {**WORKERS, "ENCODER_RESTART_MAX_DELAY_S": "1"}
TEXT = "The supervisor keeps the server up."


def log_records(live: LiveServer) -> list[dict[str, object]]:
    return [json.loads(line) for line in live.log().splitlines() if line.startswith("{")]


def pids_logging(live: LiveServer, message: str) -> list[int]:
    return [int(r["pid"]) for r in log_records(live) if str(r["message"]).startswith(message)]  # type: ignore[call-overload]


def deaths(live: LiveServer) -> list[dict[str, object]]:
    """The supervisor's records of dead children, in order."""
    return [r for r in log_records(live) if "restart_delay_s" in r]


def wait_for(condition, timeout: float = 90, what: str = "", live: LiveServer | None = None):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if live is not None:
            assert live.process.poll() is None, f"the server exited while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def serving_workers(live: LiveServer, killed: set[int]) -> list[int]:
    return [pid for pid in pids_logging(live, "ready: serving") if pid not in killed]


def new_child(live: LiveServer, known: set[int]) -> int | None:
    """A child of the supervisor started by multiprocessing that is not in `known`."""
    for child in psutil.Process(live.process.pid).children():
        try:
            spawned = "spawn_main" in " ".join(child.cmdline())
        except psutil.Error:
            continue
        if spawned and child.pid not in known:
            return child.pid
    return None


def encode_on_fresh_connection(url: str, index: int) -> int:
    return httpx.post(f"{url}/encode", json={"inputs": f"{index}: {TEXT}"}, timeout=60).status_code


def encodes_counted(url: str) -> float:
    exposition = httpx.get(f"{url}/metrics", timeout=30).text
    return metric_sum(exposition, "encoder_requests_total", 'endpoint="/encode"')


# -- class 3: kills are not crashes; back off; keep serving with the workers that live ----


def test_a_kill_storm_against_a_worker_leaves_the_server_serving(tmp_path: Path) -> None:
    live = start_server(tmp_path, FAST_RESTARTS)
    try:
        wait_for(lambda: len(serving_workers(live, set())) == 2, what="both workers", live=live)
        survivor, victim = serving_workers(live, set())[:2]
        (engine,) = pids_logging(live, "engine process ready")
        health: list[tuple[int, float]] = []
        stop = threading.Event()

        def probe() -> None:  # /health on fresh connections all along: the survivor answers
            while not stop.is_set():
                started = time.monotonic()
                try:
                    status = httpx.get(f"{live.url}/health", timeout=10).status_code
                except httpx.TransportError:
                    status = 0
                health.append((status, time.monotonic() - started))
                time.sleep(0.05)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        killed = {victim}
        os.kill(victim, signal.SIGKILL)
        # SIGKILL each replacement shortly after its start, 8 times (the old supervisor
        # took 5 such deaths in a row for a broken build and stopped the whole server).
        for _ in range(8):
            replacement = wait_for(
                lambda: new_child(live, {survivor, engine, *killed}),
                what="a replacement worker",
                live=live,
            )
            time.sleep(0.3)
            os.kill(replacement, signal.SIGKILL)
            killed.add(replacement)
        # The last replacement is left alone: it starts and serves beside the survivor.
        wait_for(lambda: len(serving_workers(live, killed)) == 2, what="a new worker", live=live)
        stop.set()
        prober.join(15)
        assert live.process.poll() is None
        assert health, "no /health answer during the storm"
        assert [status for status, _ in health] == [200] * len(health)
        statuses = [encode_on_fresh_connection(live.url, i) for i in range(16)]
        assert statuses == [200] * 16
        assert httpx.get(f"{live.url}/ready", timeout=10).status_code == 200

        # The log says each was a kill, and the pauses grew to the cap (1 s here).
        records = [r for r in deaths(live) if r["child_pid"] in killed]
        assert len(records) == len(killed) == 9
        assert all("killed by signal 9 (SIGKILL)" in str(r["message"]) for r in records)
        assert [r["restart_delay_s"] for r in records] == [0.5] + [1.0] * 8
        assert "stopping" not in live.log()
    finally:
        assert live.stop() == 0, live.log()[-3000:]


class _FakeProcess:
    """What the supervisor reads of a child: enough to drive its restart policy."""

    def __init__(self, pid: int, exitcode: int | None) -> None:
        self.pid = pid
        self.exitcode = exitcode

    def is_alive(self) -> bool:
        return self.exitcode is None

    def close(self) -> None:
        pass


def test_the_restart_policy_tells_program_crashes_from_kills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    supervisor = Supervisor(Settings(restart_max_delay_s=4), 2)
    started: list[_Slot] = []
    monkeypatch.setattr(supervisor, "_start", lambda slot, listener: started.append(slot))
    slot = _Slot("HTTP worker")

    def dies(exitcode: int, lived_s: float = 1.0) -> None:
        slot.process = _FakeProcess(1_000_000 + len(started), exitcode)  # type: ignore[assignment]
        slot.started_at = time.monotonic() - lived_s
        supervisor._tend_worker(slot, None)  # type: ignore[arg-type]

    delays = []
    for _ in range(MAX_QUICK_EXITS + 3):  # killed by signals: never a broken build
        dies(-signal.SIGKILL)
        delays.append(supervisor._delay(slot))
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert slot.crashes == 0
    dies(1)  # a program crash soon after the start: counted; the pause stays backed off
    assert (slot.crashes, slot.failures, supervisor._delay(slot)) == (1, 9, 4.0)
    dies(-signal.SIGKILL, lived_s=60)  # lived a while: a good start, counts start over
    assert (slot.crashes, slot.failures, supervisor._delay(slot)) == (0, 1, 0.5)
    for _ in range(MAX_QUICK_EXITS):
        dies(1)
    assert slot.crashes == MAX_QUICK_EXITS  # with every worker so: the server stops
    # A restart waits for its pause: not started at once.
    slot.process = None
    slot.restart_at = time.monotonic() + 60
    supervisor._tend_worker(slot, None)  # type: ignore[arg-type]
    slot.restart_at = time.monotonic() - 1
    supervisor._tend_worker(slot, None)  # type: ignore[arg-type]
    assert started == [slot]
    shutil.rmtree(supervisor.metrics_dir.parent)


# -- class 9: an engine that fails at every start backs off and says why ------------------


def linked_model(tmp_path: Path, name: str = "minilm") -> Path:
    """A model repository holding `name` as hard links: its files can be replaced here
    without touching the shared repository."""
    models = tmp_path / "models"
    for source in (MODELS_DIR / name).rglob("*"):
        target = models / name / source.relative_to(MODELS_DIR / name)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, target)
    return models


def test_an_engine_failing_at_every_restart_backs_off_and_ready_says_why(
    tmp_path: Path,
) -> None:
    models = linked_model(tmp_path)
    settings = {**WORKERS, "ENCODER_MODELS_DIR": str(models), "ENCODER_RESTART_MAX_DELAY_S": "4"}
    live = start_server(tmp_path, settings)
    try:
        (engine,) = pids_logging(live, "engine process ready")
        # The graph goes bad under the running server: only the engine process reads it,
        # so every start of the engine fails from now on, the workers serve on.
        graph = models / "minilm" / "model.onnx"
        graph.unlink()
        graph.write_bytes(b"this is not an ONNX graph")
        os.kill(engine, signal.SIGKILL)

        failures = wait_for(
            lambda: (found := [r for r in deaths(live) if r["exitcode"] == 1])[3:] and found,
            timeout=120,
            what="four failed engine starts",
            live=live,
        )
        first = [r for r in deaths(live) if r["child_pid"] == engine]
        assert "killed by signal 9" in str(first[0]["message"])
        # Pauses doubling up to the cap (4 s), each one respected before the next start.
        delays = [first[0]["restart_delay_s"], *(r["restart_delay_s"] for r in failures)]
        assert delays[:5] == [0.5, 1.0, 2.0, 4.0, 4.0]
        times = [datetime.fromisoformat(str(r["time"])).timestamp() for r in failures]
        for before, after, delay in zip(times, times[1:], delays[1:], strict=False):
            assert after - before >= delay  # the pause, then a start that failed
        # The engine's own error line reaches the supervisor's log and every /ready.
        (engine_error,) = {
            str(r["message"]).removeprefix("engine start-up failed: ")
            for r in log_records(live)
            if str(r["message"]).startswith("engine start-up failed: ")
        }
        assert f"exited with code 1 (ModelLoadError: {engine_error}" in str(failures[0]["message"])
        for _ in range(4):  # fresh connections: either worker
            answer = httpx.get(f"{live.url}/ready", timeout=10)
            assert answer.status_code == 503
            reason = answer.json()["error"]["message"]
            assert (
                f"the engine process exited with code 1 (ModelLoadError: {engine_error})" in reason
            )
            assert "failure(s) in a row" in reason and "pause" in reason, reason
        assert httpx.get(f"{live.url}/health", timeout=10).status_code == 200

        # Repaired, the engine comes back at its next start and /ready forgets the failure.
        graph.unlink()
        os.link(MODELS_DIR / "minilm" / "model.onnx", graph)
        wait_for(
            lambda: all(
                httpx.get(f"{live.url}/ready", timeout=10).status_code == 200 for _ in range(4)
            ),
            timeout=120,
            what="ready again",
            live=live,
        )
        assert encode_on_fresh_connection(live.url, 0) == 200
    finally:
        assert live.stop() == 0, live.log()[-3000:]


# -- class 15: dead processes' metric files; the runtime dir of a killed supervisor ------


def test_metric_files_of_dead_workers_do_not_pile_up_and_totals_hold(tmp_path: Path) -> None:
    runtime_parent = tmp_path / "tmp"
    runtime_parent.mkdir()
    live = start_server(tmp_path, {**FAST_RESTARTS, "TMPDIR": str(runtime_parent)})
    try:
        (metrics_dir,) = runtime_parent.glob("encoder-serve-*/metrics")
        killed: set[int] = set()
        sent = 0
        for _ in range(5):
            wait_for(lambda: len(serving_workers(live, killed)) == 2, what="workers", live=live)
            statuses = [encode_on_fresh_connection(live.url, sent + i) for i in range(12)]
            assert statuses == [200] * 12
            sent += 12
            assert encodes_counted(live.url) == sent
            counting = [
                pid
                for pid in serving_workers(live, killed)
                if (metrics_dir / f"counter_{pid}.db").exists()
            ]
            victim = (counting or serving_workers(live, killed))[0]
            os.kill(victim, signal.SIGKILL)
            killed.add(victim)
            # Reaped by the supervisor, which then folds its files (under the scrapes' lock).
            wait_for(lambda v=victim: not psutil.pid_exists(v), what="the death noted", live=live)
            # The dead worker's requests still count, before and after its files are folded.
            assert encodes_counted(live.url) == sent
        wait_for(lambda: len(serving_workers(live, killed)) == 2, what="workers", live=live)
        alive = {str(p.pid) for p in psutil.Process(live.process.pid).children()}
        files = sorted(path.name for path in metrics_dir.glob("*.db"))
        owners = {name.removesuffix(".db").rsplit("_", 1)[1] for name in files}
        assert owners <= alive | {"archive"}, files
        assert len(files) <= 3 * 4 + len(("counter", "histogram")), files
        assert encodes_counted(live.url) == sent
    finally:
        assert live.stop() == 0, live.log()[-3000:]


def test_the_runtime_dir_does_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    runtime_parent = tmp_path / "tmp"
    runtime_parent.mkdir()
    # Left by a supervisor killed earlier, along with its children: its owner is gone.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = runtime_parent / "encoder-serve-stale"
    (stale / "metrics").mkdir(parents=True)
    (stale / "supervisor.pid").write_text(f"{gone.pid} {time.time() - 100}")
    live = start_server(tmp_path, {**WORKERS, "TMPDIR": str(runtime_parent)})
    children: list[psutil.Process] = []
    try:
        (runtime,) = (d for d in runtime_parent.glob("encoder-serve-*") if d != stale)
        assert (runtime / "engine.sock").exists()
        children = psutil.Process(live.process.pid).children(recursive=True)
        live.process.kill()
        live.process.wait()
        started = time.monotonic()
        wait_for(lambda: not runtime.exists(), timeout=20, what="the runtime dir removed")
        removed_s = time.monotonic() - started
        _, running = psutil.wait_procs(children, timeout=30)
        assert not running, running
        assert removed_s < 10
        assert not stale.exists(), "a stale runtime dir was kept"  # the server removed it
    finally:
        live.stop()
        for child in children:
            if child.is_running():
                child.kill()
