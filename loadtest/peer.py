"""`make bench-peer`: encoder-serve against infinity-emb serving the same fused ONNX graph.

Run `python -m loadtest.peer` (or `make bench-peer`); `BENCH_QUICK=1` for a ~2 minute run.
Installs infinity-emb into its own virtualenv `.venv-peer` (once), lays our model out as a
directory its ONNX engine loads, and runs the same closed loops (single-text requests, 1 and
32 clients) against each server in turn, alternating, one server up at a time. Writes
loadtest/results/peer.md, its .json twin and peer.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from app.config import Settings
from loadtest import machine
from loadtest.bench import RESULTS_DIR, choose_generator, server_env
from loadtest.client import LoadOutcome, LoadSpec, run_load
from loadtest.infinity import (
    PeerModel,
    ensure_venv,
    infinity_command,
    lay_out_model,
    package_versions,
    running_infinity,
)
from loadtest.options import add_run_options
from loadtest.peer_report import (
    ENCODER_SERVE,
    INFINITY,
    PeerPoint,
    PeerReport,
    headline,
    table,
    write_plot,
    write_report,
)
from loadtest.report import LoadPoint
from loadtest.runner import MODEL, log, texts_for
from loadtest.server import ROOT, RunningServer, running_server, serve_command
from loadtest.texts import TextSource
from loadtest.wrk import run_wrk, wrk_version

ROUTE = "/v1/embeddings"  # OpenAI's shape: both servers answer it, so the bytes are the same
RATE_BOUND = 500.0  # sequences/s no point reaches on CPU: enough fresh texts per point
WARMUP_CLIENTS = 8
PROBE = "The cat sits on the mat while a careful child reads a long story."
STEM = "peer"
ServerStart = AbstractContextManager[RunningServer]
ISOLATION = (
    "one server process at a time: each turn starts its server, waits until it is ready, "
    "warms it up for {warmup:.0f} s at {clients} clients (not counted), measures each load "
    "level (after its CPU went quiet), and stops it before the other server starts. Each "
    "round runs both servers back to back; the one that goes first alternates from round to "
    "round (encoder-serve first in odd rounds), so neither always has the later slot."
)


@dataclass(frozen=True)
class PeerPlan:
    """How many rounds and how long; the quick plan is a short smoke run."""

    quick: bool
    rounds: int  # each: both servers, one after the other
    point_s: float  # each load level
    warmup_s: float
    clients: tuple[int, ...] = (1, 32)


FULL = PeerPlan(False, rounds=3, point_s=10.0, warmup_s=3.0)
QUICK = PeerPlan(True, rounds=2, point_s=4.0, warmup_s=2.0)


def turn_order(rounds: int) -> list[tuple[int, str]]:
    """(round, server) in running order: every round has both, the first alternates."""
    turns = []
    for number in range(1, rounds + 1):
        pair = (ENCODER_SERVE, INFINITY) if number % 2 else (INFINITY, ENCODER_SERVE)
        turns += [(number, server) for server in pair]
    return turns


# -- measuring -----------------------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores, all processes)."""
    t = psutil.cpu_times()  # guest time is already counted in user time
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


def wait_quiet(server: RunningServer, timeout_s: float = 15.0, interval_s: float = 0.25) -> None:
    """Until the server uses under a tenth of a core: the last requests have run."""
    deadline = time.monotonic() + timeout_s
    last = server.cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(interval_s)
        now = server.cpu_seconds()
        if (now - last) / interval_s < 0.1:
            return
        last = now


def embed(server: RunningServer, text: str) -> list[float]:
    body = json.dumps({"model": MODEL, "input": text}).encode()
    request = urllib.request.Request(
        f"{server.url}{ROUTE}", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return list(json.loads(response.read())["data"][0]["embedding"])


def compare(first: list[float], second: list[float]) -> dict[str, float]:
    dot = sum(a * b for a, b in zip(first, second, strict=True))
    norms = math.sqrt(sum(a * a for a in first)) * math.sqrt(sum(b * b for b in second))
    return {
        "cosine": dot / norms,
        "max_abs_diff": max(abs(a - b) for a, b in zip(first, second, strict=True)),
    }


class Generator:
    """Closed loops with wrk, or with the asyncio client in its own process."""

    def __init__(self, use_wrk: bool) -> None:
        self.use_wrk = use_wrk
        self.name = "wrk" if use_wrk else "asyncio"
        self._pool: ProcessPoolExecutor | None = None

    def run(self, spec: LoadSpec) -> LoadOutcome:
        if self.use_wrk:
            return run_wrk(spec)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool.submit(run_load, spec).result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def load_spec(server: RunningServer, texts: list[str], clients: int, seconds: float) -> LoadSpec:
    """Single-text requests in OpenAI's shape, the same bytes for either server."""
    return LoadSpec(
        "127.0.0.1", server.port, texts, 1, seconds, clients=clients,
        path=ROUTE, input_field="input", model=MODEL,
    )  # fmt: skip


def closed_loop(
    generator: Generator, server: RunningServer, texts: list[str], clients: int, seconds: float
) -> tuple[LoadPoint, float]:
    """The load point, and the cores other processes used meanwhile."""
    spec = load_spec(server, texts, clients, seconds)
    cpu_before, started = server.cpu_seconds(), time.perf_counter()
    busy_before = machine_busy_seconds()
    outcome = generator.run(spec)
    server_cpu = server.cpu_seconds() - cpu_before
    wall = time.perf_counter() - started
    # What neither the server nor the load generator used: other work sharing the cores.
    others = (machine_busy_seconds() - busy_before - server_cpu - outcome.cpu_s) / wall
    return LoadPoint(
        label=f"{clients} client" + ("s" * (clients != 1)),
        mode="closed",
        clients=clients,
        target_rate=None,
        texts_per_request=1,
        duration_s=outcome.window_s,
        requests=outcome.requests,
        answered=outcome.answered,
        errors=outcome.errors,
        sequences_per_s=outcome.answered / outcome.window_s,
        p50_ms=outcome.p50_ms,
        p90_ms=outcome.p90_ms,
        p99_ms=outcome.p99_ms,
        generator=generator.name,
        generator_cpu_cores=outcome.cpu_s / outcome.wall_s,
        server_cpu_cores=server_cpu / wall,
        pool_wraps=outcome.pool_wraps,
    ), max(0.0, others)


@dataclass
class Round:
    """The texts of one round: both servers get these, in this order."""

    warmup: list[str]
    levels: dict[int, list[str]]  # clients → texts


def plan_round(plan: PeerPlan, source: TextSource) -> Round:
    warmup = source.take(texts_for(RATE_BOUND, plan.warmup_s))
    levels = {clients: source.take(texts_for(RATE_BOUND, plan.point_s)) for clients in plan.clients}
    return Round(warmup, levels)


def measure_turn(
    plan: PeerPlan,
    generator: Generator,
    server: RunningServer,
    texts: Round,
    turn: tuple[int, str, int],
) -> list[PeerPoint]:
    number, name, slot = turn
    generator.run(load_spec(server, texts.warmup, WARMUP_CLIENTS, plan.warmup_s))
    points = []
    for clients in plan.clients:
        wait_quiet(server)
        load, others = closed_loop(generator, server, texts.levels[clients], clients, plan.point_s)
        log(
            f"  round {number} {name:<13} {clients:>3} clients: "
            f"{load.sequences_per_s:6.1f} seq/s  p50 {load.p50_ms:6.1f} ms  "
            f"p99 {load.p99_ms:6.1f} ms  errors {load.errors}  server CPU "
            f"{load.server_cpu_cores or 0:.2f}  others {others:.2f}"
        )
        points.append(PeerPoint(name, number, slot, load, others))
    return points


# -- the whole run -------------------------------------------------------------------


def encoder_env() -> dict[str, str]:
    """The bench's server environment, pinned to the graph and provider infinity runs."""
    # fp32: the graph infinity loads. cpu: the peer's venv has ONNX Runtime's CPU build.
    return {**server_env(), "ENCODER_PRECISION": "fp32", "ENCODER_DEVICE": "cpu"}


def commands(venv: Path, model: PeerModel) -> dict[str, str]:
    program, *arguments = serve_command()
    theirs = infinity_command(venv, model, 0, MODEL)
    theirs[0] = os.path.relpath(theirs[0], ROOT)
    return {
        ENCODER_SERVE: " ".join([os.path.relpath(program, ROOT), *arguments]),
        INFINITY: " ".join(theirs).replace("--port 0", "--port <free>"),
    }


ENVIRONMENTS = {
    ENCODER_SERVE: "ENCODER_* as in the settings below; a free loopback port",
    INFINITY: "working directory: the laid-out model directory; HF_HUB_OFFLINE=1, "
    "telemetry off, caches in a scratch folder, no INFINITY_* from the caller",
}


def versions(venv: Path) -> dict[str, dict[str, str]]:
    ours = package_versions(
        sys.executable,
        ("encoder-serve", "onnxruntime", "tokenizers", "numpy", "fastapi", "uvicorn"),
    )
    return {ENCODER_SERVE: ours, INFINITY: package_versions(venv / "bin" / "python")}


def version_notes(found: dict[str, dict[str, str]]) -> list[str]:
    ours, theirs = found[ENCODER_SERVE]["onnxruntime"], found[INFINITY]["onnxruntime"]
    if ours == theirs:
        return [f"Both servers run ONNX Runtime {ours} (each from its own virtualenv)."]
    return [f"ONNX Runtime differs: {ours} for encoder-serve, {theirs} for infinity-emb."]


FIXED_NOTES = [
    "infinity-emb runs with its defaults otherwise (batch size 32, no result cache); "
    "encoder-serve with its defaults, pinned to the fp32 graph and the CPU.",
    "Truncation differs (encoder-serve at the manifest's 256 tokens, infinity at the "
    "config's 512 positions); the texts (8–40 words) stay far below both.",
]


def measure(
    plan: PeerPlan, generator: Generator, starts: dict[str, Callable[[], ServerStart]]
) -> tuple[list[PeerPoint], dict[str, list[float]]]:
    """Every turn in order, and each server's answer to the probe text."""
    source = TextSource()
    rounds = [plan_round(plan, source) for _ in range(plan.rounds)]
    points: list[PeerPoint] = []
    probes: dict[str, list[float]] = {}
    for index, (number, name) in enumerate(turn_order(plan.rounds)):
        log(f"round {number}: starting {name}")
        with starts[name]() as server:
            probes.setdefault(name, embed(server, PROBE))
            turn = (number, name, 1 + index % 2)
            points += measure_turn(plan, generator, server, rounds[number - 1], turn)
    return points, probes


def run(plan: PeerPlan, generator_choice: str, out_dir: Path) -> Path:
    started = time.monotonic()
    notes = machine.busy_notes(os.getloadavg()[0])
    venv = ensure_venv()
    env = encoder_env()
    os.environ.update(env)  # Settings below sees exactly what the server sees
    generator = Generator(choose_generator(generator_choice, notes))
    machine_info = machine.describe_machine()
    machine_info["load_generator"] = (
        wrk_version() if generator.use_wrk else "asyncio client (uvloop)"
    )
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as scratch_name:
        scratch = Path(scratch_name)
        model = lay_out_model(ROOT / "models" / MODEL, scratch / "model")
        machine_info["model"] = f"{MODEL}: fp32 graph {model.graph.relative_to(ROOT)}"
        starts: dict[str, Callable[[], ServerStart]] = {
            ENCODER_SERVE: lambda: running_server(env, scratch / "encoder-serve.log"),
            INFINITY: lambda: running_infinity(
                venv, model, MODEL, scratch, scratch / "infinity.log"
            ),
        }
        try:
            points, probes = measure(plan, generator, starts)
        finally:
            generator.close()
        found = versions(venv)
        report = PeerReport(
            created=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            host=machine.host_name(),
            quick=plan.quick,
            rounds=plan.rounds,
            point_s=plan.point_s,
            warmup_s=plan.warmup_s,
            request=f'`POST {ROUTE}` with `{{"model":"{MODEL}","input":"<one text>"}}`, '
            f"HTTP/1.1 keep-alive, closed loop by {generator.name}",
            isolation=ISOLATION.format(warmup=plan.warmup_s, clients=WARMUP_CLIENTS),
            commands=commands(venv, model),
            environments=ENVIRONMENTS,
            versions=found,
            settings=machine.describe_settings(Settings(host="127.0.0.1"), env),
            machine={**machine_info, "load_average_at_end": machine.load_average()},
            parity=compare(probes[ENCODER_SERVE], probes[INFINITY]),
            points=points,
            notes=[*notes, *version_notes(found), *FIXED_NOTES],
        )
    path = save(report, out_dir)
    log(f"done in {time.monotonic() - started:.0f} s")
    print("\n".join([*headline(report), "", *table(report), "", f"report: {path}"]))
    return path


def save(report: PeerReport, out_dir: Path) -> Path:
    plot_name: str | None = f"{STEM}.png"
    try:
        write_plot(report, out_dir / f"{STEM}.png")
    except ImportError as error:  # the report is still worth having without its picture
        report.notes.append(f"no plot: {error} (install the bench extra)")
        plot_name = None
    return write_report(report, out_dir, STEM, plot_name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.peer", description=__doc__)
    add_run_options(
        parser,
        quick="short run: 2 rounds of 4 s per load level",
        duration="seconds per load level and server",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=int(os.environ.get("BENCH_PEER_ROUNDS", 0)),
        help="rounds, each with both servers; at least 2 (also BENCH_PEER_ROUNDS)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="report directory")
    return parser.parse_args(argv)


def plan_from(args: argparse.Namespace) -> PeerPlan:
    plan = QUICK if args.quick else FULL
    if args.duration > 0:
        plan = replace(plan, point_s=args.duration)
    if args.rounds:
        if args.rounds < 2:
            raise SystemExit("--rounds: at least 2, so that each server goes first once")
        plan = replace(plan, rounds=args.rounds)
    return plan


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = plan_from(args)
    # SIGTERM unwinds like Ctrl-C, so whichever server is up is always stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run(plan, args.generator, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
