"""Closed-loop load with wrk (C, one epoll thread) and `encode.lua`, and wrk's own CPU cost."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from loadtest.client import LoadOutcome, LoadSpec
from loadtest.texts import write_pool

SCRIPT = Path(__file__).with_name("encode.lua")


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str:
    path = wrk_path()
    if path is None:
        return "not installed"
    # `wrk -v` prints its banner and exits 1; the first line is what we want.
    banner = subprocess.run([path, "-v"], capture_output=True, text=True, check=False)
    first_line = (banner.stdout or banner.stderr).splitlines()[0]
    return first_line.split(" Copyright")[0].strip()


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(spec: LoadSpec) -> LoadOutcome:
    """A closed-loop run; wrk's CPU comes from the rusage of the reaped child process.

    RUSAGE_CHILDREN covers every child reaped in the interval; in the bench none other
    ends meanwhile (the server and the asyncio generator process outlive each run).
    """
    path = wrk_path()
    if path is None or spec.clients is None:
        raise RuntimeError("run_wrk needs wrk on PATH and a closed-loop spec")
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as scratch:
        pool = write_pool(spec.texts, Path(scratch) / "texts.txt")
        result = Path(scratch) / "result.json"
        env = {
            **os.environ,
            "WRK_TEXTS": str(pool),
            "WRK_RESULT": str(result),
            "WRK_BATCH": str(spec.texts_per_request),
            "WRK_FIELD": spec.input_field,
            "WRK_MODEL": spec.model or "",
        }
        seconds = max(1, round(spec.duration_s))
        command = [
            path, "-t1", f"-c{spec.clients}", f"-d{seconds}s", "--timeout", "60s",
            "-s", str(SCRIPT), f"http://{spec.host}:{spec.port}{spec.path}",
        ]  # fmt: skip
        cpu_before, started = _children_cpu_seconds(), time.perf_counter()
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            output, _ = process.communicate(timeout=seconds + 70)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        wall, cpu = time.perf_counter() - started, _children_cpu_seconds() - cpu_before
        if process.returncode != 0 or not result.is_file():
            raise RuntimeError(f"wrk failed ({process.returncode}):\n{output.decode()}")
        figures = json.loads(result.read_text())
    errors = sum(
        figures[key]
        for key in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    requests = int(figures["requests"])
    return LoadOutcome(
        requests=requests,
        answered=requests - int(figures["status_errors"]),
        errors=int(errors),
        window_s=figures["duration_us"] / 1e6,
        wall_s=wall,
        cpu_s=cpu,
        p50_ms=figures["p50_us"] / 1000,
        p90_ms=figures["p90_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        dispatch_lag_p99_ms=None,
        pool_wraps=int(figures["pool_wraps"]),
    )
