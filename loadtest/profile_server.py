"""`python -m loadtest.profile_server`: where the server's CPU goes under closed-loop load (py-spy).

Starts the server as the bench does, holds `--clients` concurrent single-text clients on
it, and meanwhile (1) samples the server's Python stacks with `py-spy record` and (2)
reads every OS thread's CPU time (psutil). Python samples are sorted into categories
(ONNX Runtime, tokenization, JSON, HTTP, logging, …) by their innermost recognised frame;
CPU of threads Python does not know (ONNX Runtime's intra-op pool) counts as ONNX Runtime.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

from loadtest.bench import RESULTS_DIR, server_env
from loadtest.client import LoadSpec
from loadtest.machine import host_name
from loadtest.runner import MODEL
from loadtest.server import RunningServer, batch_counters, running_server
from loadtest.texts import TextSource
from loadtest.wrk import run_wrk, wrk_path

# Checked from the innermost frame outwards; the first category with a matching frame wins.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ONNX Runtime forward pass", ("onnxruntime", "app/backends/onnx.py")),
    (
        "pad or pack, pool, normalize",
        ("app/engine/passes/pipeline.py", "app/engine/passes/packing.py", "numpy/"),
    ),
    ("tokenization", ("tokenization.py", "tokenizers")),
    ("logging", ("logging/", "app/logs.py")),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("response JSON (orjson)", ("orjson", "json_response")),
    (
        "request JSON + validation (pydantic)",
        ("pydantic", "json/", "Request.json", "Request.body", "request_body_to_args", "_validate"),
    ),
    ("HTTP protocol (uvicorn httptools)", ("httptools", "h11", "uvicorn/protocols")),
    ("batcher", ("app/engine/batching/",)),
    ("routes + engine (app)", ("app/",)),
    ("framework (FastAPI, Starlette middleware)", ("starlette/", "fastapi/", "uvicorn/")),
    ("event loop + threads (asyncio, uvloop)", ("asyncio/", "uvloop", "concurrent/", "threading")),
)
NATIVE = "ONNX Runtime intra-op pool (native threads)"
MAIN_ROOT = "<module>"  # the main thread runs the event loop; workers start in Thread._bootstrap
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*)\)$")


def categorize(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def parse_raw(text: str) -> dict[str, Counter[str]]:
    """py-spy's raw (collapsed) stacks -> samples per category, for main and worker threads."""
    samples: dict[str, Counter[str]] = {"main": Counter(), "workers": Counter()}
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = "main" if frames[0].startswith(MAIN_ROOT) else "workers"
        samples[thread][categorize(frames)] += int(count)
    return samples


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each OS thread of a process."""
    threads = psutil.Process(pid).threads()
    return {thread.id: thread.user_time + thread.system_time for thread in threads}


def python_threads(py_spy: str, pid: int) -> dict[int, str]:
    """OS thread ids of the Python threads, with their names, from `py-spy dump`."""
    dump = subprocess.run([py_spy, "dump", "-p", str(pid)], capture_output=True, text=True)
    found = re.findall(r'^Thread (\d+) \(\w+\): "([^"]*)"', dump.stdout, flags=re.MULTILINE)
    return {int(tid): name for tid, name in found}


def cpu_by_category(
    samples: dict[str, Counter[str]], cpu: dict[int, float], names: dict[int, str], pid: int
) -> dict[str, float]:
    """Spread each thread group's CPU seconds over its sampled categories."""
    groups = {"main": 0.0, "workers": 0.0, "native": 0.0}
    for tid, seconds in cpu.items():
        group = "main" if tid == pid else "workers" if tid in names else "native"
        groups[group] += seconds
    shares = {NATIVE: groups["native"]}
    for group in ("main", "workers"):
        total = sum(samples[group].values())
        for category, count in samples[group].items():
            shares[category] = shares.get(category, 0.0) + groups[group] * count / total
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


def record(server: RunningServer, py_spy: str, seconds: float, raw: Path) -> dict[int, float]:
    """py-spy record over the window; returns each OS thread's CPU seconds in it."""
    pid = server.process.pid
    before = thread_cpu(pid)
    subprocess.run(
        [py_spy, "record", "-p", str(pid), "-r", "100", "-d", str(int(seconds)),
         "-f", "raw", "-o", str(raw), "--nonblocking"],
        check=True, capture_output=True,
    )  # fmt: skip
    after = thread_cpu(pid)
    return {tid: after[tid] - before.get(tid, 0.0) for tid in after}


def write_summary(
    shares: dict[str, float], wall_s: float, clients: int, requests: float, path: Path
) -> str:
    total = sum(shares.values())
    lines = [
        f"# Server CPU under {clients} closed-loop clients — {host_name()}",
        "",
        f"{total / wall_s:.2f} cores busy on average over {wall_s:.0f} s; {requests:.0f} "
        f"single-text requests answered ({requests / wall_s:.1f}/s), "
        f"{1000 * total / max(requests, 1):.1f} ms of CPU each.",
        "",
        "| where | share of server CPU | cores | CPU ms per request |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {100 * seconds / total:.1f} % | {seconds / wall_s:.3f} | "
            f"{1000 * seconds / max(requests, 1):.2f} |"
            for name, seconds in shares.items()
        ),
        "",
    ]
    text = "\n".join(lines)
    path.write_text(text, encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.profile_server", description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="sampling window")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if wrk_path() is None or not Path(py_spy).exists():
        raise SystemExit("needs wrk (apt-get install wrk) and py-spy (the bench extra)")
    stem = f"{datetime.date.today():%Y-%m-%d}-{host_name()}-profile"
    args.out.mkdir(parents=True, exist_ok=True)
    env = server_env()
    with (
        tempfile.TemporaryDirectory(prefix="profile-") as scratch,
        running_server(env, Path(scratch) / "server.log") as server,
    ):
        # The load runs a little longer than the sampling window on both sides.
        spec = LoadSpec(
            "127.0.0.1", server.port, TextSource(7).take(int(300 * (args.seconds + 10))),
            texts_per_request=1, duration_s=args.seconds + 6, clients=args.clients,
        )  # fmt: skip
        load = threading.Thread(target=run_wrk, args=(spec,))
        load.start()
        time.sleep(3)
        names = python_threads(py_spy, server.process.pid)
        before, started = batch_counters(server, MODEL), time.perf_counter()
        cpu = record(server, py_spy, args.seconds, args.out / f"{stem}.txt")
        wall = time.perf_counter() - started
        requests = (batch_counters(server, MODEL) - before).answered_requests
        load.join()
    samples = parse_raw((args.out / f"{stem}.txt").read_text())
    shares = cpu_by_category(samples, cpu, names, server.process.pid)
    print(write_summary(shares, wall, args.clients, requests, args.out / f"{stem}.md"))
    print(f"stacks: {args.out / f'{stem}.txt'} (collapsed; e.g. flamegraph.pl or speedscope)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
