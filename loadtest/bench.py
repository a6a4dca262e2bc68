"""`make bench`: engine limit, server under closed and open loop, client batches; one report.

Run `python -m loadtest.bench` (or `make bench`); `BENCH_QUICK=1` for a ~1 minute smoke run.
Writes loadtest/results/<date>-<host>.md, its .json twin and a .png plot.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from onnxruntime import get_available_providers as available_providers

from app.config import Settings
from loadtest import machine
from loadtest.engine import (
    COMPARED_BATCH_SIZES,
    EngineJob,
    compare_precisions,
    compare_texts_needed,
    compared_precisions,
    measure_engine,
    served_graph,
    texts_needed,
)
from loadtest.options import add_run_options
from loadtest.report import (
    BenchReport,
    EngineResult,
    LoadPoint,
    PrecisionPoint,
    TorchResult,
    efficiency_line,
    summary_table,
    write_report,
)
from loadtest.runner import MODEL, LoadRunner, log
from loadtest.server import ROOT, UNAUTHENTICATED, running_server, serve_command
from loadtest.texts import TextSource
from loadtest.torch_baseline import TorchJob, measure_torch
from loadtest.wrk import wrk_path, wrk_version

RESULTS_DIR = ROOT / "loadtest" / "results"
Job = TypeVar("Job")
Outcome = TypeVar("Outcome")


@dataclass(frozen=True)
class Plan:
    """How long and at which levels to measure; the quick plan is a ~1 minute smoke run."""

    quick: bool
    point_s: float  # each server load point
    warmup_s: float
    engine_batch_sizes: tuple[int, ...]
    engine_budget_s: float  # per batch size and round
    engine_rounds: int  # sweeps over the batch sizes; each point is the median of its rounds
    torch_budget_s: float
    torch: bool  # the PyTorch context figure (its import alone takes seconds)
    precisions: bool = True  # fp32 and int8 engine side by side, where both are built
    closed_clients: tuple[int, ...] = (1, 8, 32, 128)
    open_shares: tuple[float, ...] = (0.5, 0.8)
    batch_clients: int = 4
    batch_texts: int = 32


FULL = Plan(False, 12.0, 3.0, (1, 2, 4, 8, 16, 32, 64, 128), 2.0, 3, 4.0, torch=True)
QUICK = Plan(True, 4.0, 1.0, (1, 8, 32, 128), 0.5, 1, 1.0, torch=False, precisions=False)


def in_fresh_process(function: Callable[[Job], Outcome], job: Job) -> Outcome:
    """Run one measurement in its own process: its threads and memory leave with it."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(function, job).result()


# -- in-process figures ------------------------------------------------------------


def measure_engine_limit(plan: Plan, settings: Settings, texts: list[str]) -> EngineResult:
    log(
        f"engine limit: batch sizes {list(plan.engine_batch_sizes)}, "
        f"{settings.intra_op_threads} threads, {plan.engine_rounds} rounds"
    )
    job = EngineJob(
        settings.models_dir / MODEL,
        settings.precision,
        settings.intra_op_threads,
        settings.device,
        plan.engine_batch_sizes,
        texts,
        plan.engine_budget_s,
        settings.packing,
        plan.engine_rounds,
    )
    return in_fresh_process(measure_engine, job)


def why_not_compared(plan: Plan, settings: Settings, precisions: list[str]) -> str | None:
    """Why the precisions are not measured side by side in this run, or None."""
    if not plan.precisions:
        return "not in quick runs"
    if settings.device != "cpu" and "CUDAExecutionProvider" in available_providers():
        return "int8 is a CPU graph, and this run is on the GPU"
    if len(precisions) < 2:
        return f"only {precisions} built; `make models` builds int8 too"
    return None


def measure_precisions(
    plan: Plan, settings: Settings, texts: TextSource, notes: list[str]
) -> list[PrecisionPoint]:
    """fp32 and int8 engine throughput side by side, where the model has both graphs."""
    model_dir = settings.models_dir / MODEL
    precisions = compared_precisions(model_dir)
    skipped = why_not_compared(plan, settings, precisions)
    if skipped:
        notes.append(f"Precisions not compared side by side: {skipped}.")
        return []
    log(f"precisions side by side: {precisions}, batch sizes {list(COMPARED_BATCH_SIZES)}")
    job = EngineJob(
        model_dir,
        "fp32",
        settings.intra_op_threads,
        settings.device,
        COMPARED_BATCH_SIZES,
        texts.take(compare_texts_needed(COMPARED_BATCH_SIZES)),
        plan.engine_budget_s,
        settings.packing,
    )
    points = in_fresh_process(compare_precisions, job)
    for point in points:
        log(f"  {point.precision} batch {point.batch_size}: {point.sequences_per_s:.1f}/s")
    return points


def measure_pytorch(
    plan: Plan, settings: Settings, texts: list[str], notes: list[str]
) -> TorchResult | None:
    log("PyTorch (sentence-transformers) for context")
    try:
        result = in_fresh_process(
            measure_torch, TorchJob(settings.intra_op_threads, texts, plan.torch_budget_s)
        )
    except Exception as error:  # context only: the bench goes on without it
        notes.append(f"PyTorch baseline skipped: {error!r}")
        return None
    log(f"  PyTorch batch {result.batch_size}: {result.sequences_per_s:.1f} sequences/s")
    return result


# -- load against the server -----------------------------------------------------------


def measure_server(plan: Plan, runner: LoadRunner) -> dict[str, list[LoadPoint]]:
    log(f"warm-up: {plan.warmup_s:.0f} s at 8 clients")
    runner.closed("warm-up", 8, plan.warmup_s)
    closed = [
        runner.closed(f"{clients} client" + ("s" * (clients != 1)), clients, plan.point_s)
        for clients in plan.closed_clients
    ]
    capacity = max(point.sequences_per_s for point in closed)
    open_loop = [
        runner.open(f"{100 * share:.0f} % of capacity", share * capacity, plan.point_s)
        for share in plan.open_shares
    ]
    label = f"{plan.batch_clients} clients × {plan.batch_texts} texts"
    batches = [runner.closed(label, plan.batch_clients, plan.point_s, plan.batch_texts)]
    return {"closed": closed, "open_loop": open_loop, "batches": batches}


# -- the whole run ----------------------------------------------------------------


def server_env() -> dict[str, str]:
    """The server's environment: the user's ENCODER_* values, the bench's model and repository."""
    env = {key: value for key, value in os.environ.items() if key.startswith("ENCODER_")}
    # Servers run without a key (loadtest/server.py); the report's settings say so too.
    for name in UNAUTHENTICATED:
        env.pop(name, None)
        os.environ.pop(name, None)
    env["ENCODER_MODELS"] = MODEL
    models_dir = Path(env.get("ENCODER_MODELS_DIR", "models"))
    env["ENCODER_MODELS_DIR"] = str(models_dir if models_dir.is_absolute() else ROOT / models_dir)
    return env


def choose_generator(requested: str, notes: list[str]) -> bool:
    """Whether the closed loop uses wrk; falls back to the asyncio client without it."""
    if requested == "asyncio":
        return False
    if wrk_path() is not None:
        return True
    if requested == "wrk":
        raise SystemExit("--generator wrk: wrk is not installed (Debian: apt-get install wrk)")
    notes.append(
        "wrk is not installed (Debian: `apt-get install wrk`): the closed loop used the asyncio "
        "client, whose CPU share is in the tables."
    )
    log("wrk not found: closed loop falls back to the asyncio client")
    return False


def measure_in_process(
    plan: Plan, settings: Settings, texts: TextSource, notes: list[str]
) -> tuple[EngineResult, TorchResult | None]:
    engine_texts = texts.take(texts_needed(plan.engine_batch_sizes, plan.engine_rounds))
    engine = measure_engine_limit(plan, settings, engine_texts)
    log(
        f"engine limit: {engine.best.sequences_per_s:.1f} sequences/s "
        f"at batch {engine.best.batch_size}"
    )
    if not plan.torch:
        notes.append("PyTorch context figure not measured (quick run or --no-torch).")
        return engine, None
    return engine, measure_pytorch(plan, settings, engine_texts, notes)


def measure_served(
    plan: Plan, env: dict[str, str], use_wrk: bool, texts: TextSource, engine_limit: float
) -> tuple[dict[str, list[LoadPoint]], int]:
    """Every server load point, and the port the server listened on."""
    log(f"starting the server ({' '.join(serve_command())})")
    with (
        tempfile.TemporaryDirectory(prefix="bench-") as scratch,
        running_server(env, Path(scratch) / "server.log") as server,
    ):
        # The server cannot beat the engine by much; 1.5x leaves room for a noisy engine figure.
        runner = LoadRunner(server, use_wrk, texts, 1.5 * engine_limit + 50)
        try:
            return measure_server(plan, runner), server.port
        finally:
            runner.close()


def run(plan: Plan, generator: str, out_dir: Path) -> Path:
    started = time.monotonic()
    notes = machine.busy_notes(os.getloadavg()[0])
    env = server_env()
    os.environ.update(env)  # the engine job and Settings see exactly what the server sees
    use_wrk = choose_generator(generator, notes)
    machine_info = machine.describe_machine()
    machine_info["load_generator"] = wrk_version() if use_wrk else "asyncio client (uvloop)"
    texts = TextSource()
    settings = Settings()
    precision, graph = served_graph(settings.models_dir / MODEL, settings.precision)
    machine_info["model"] = f"{MODEL}: {precision} graph {graph.name}"
    if settings.backend != "onnx":
        notes.append("ENCODER_BACKEND is not onnx: the engine limit is ONNX Runtime's anyway.")

    engine, torch = measure_in_process(plan, settings, texts, notes)
    precisions = measure_precisions(plan, settings, texts, notes)
    points, port = measure_served(plan, env, use_wrk, texts, engine.best.sequences_per_s)

    machine_info["load_average_at_end"] = machine.load_average()
    served_env = {**env, "ENCODER_HOST": "127.0.0.1", "ENCODER_PORT": str(port)}
    now = datetime.datetime.now().astimezone()
    report = BenchReport(
        created=now.isoformat(timespec="seconds"),
        host=machine.host_name(),
        quick=plan.quick,
        settings=machine.describe_settings(Settings(host="127.0.0.1", port=port), served_env),
        machine=machine_info,
        engine=engine,
        torch=torch,
        notes=notes,
        precisions=precisions,
        **points,
    )
    # One report per day, host and precision (fp32 unmarked): an int8 run keeps the fp32 one.
    stem = f"{now:%Y-%m-%d}-{report.host}" + ("" if precision == "fp32" else f"-{precision}")
    path = save(report, out_dir, stem + ("-quick" if plan.quick else ""))
    log(f"done in {time.monotonic() - started:.0f} s")
    print("\n".join([efficiency_line(report), "", *summary_table(report), "", f"report: {path}"]))
    return path


def save(report: BenchReport, out_dir: Path, stem: str) -> Path:
    plot_name: str | None = f"{stem}.png"
    try:
        from loadtest.plot import write_plot

        write_plot(report, out_dir / f"{stem}.png")
    except ImportError as error:  # the report is still worth having without its picture
        report.notes.append(f"no plot: {error} (install the bench extra)")
        plot_name = None
    return write_report(report, out_dir, stem, plot_name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__)
    add_run_options(parser, quick="~1 minute smoke run", duration="seconds per server load point")
    parser.add_argument(
        "--torch",
        action=argparse.BooleanOptionalAction,
        help="measure PyTorch for context (default: in full runs, not in quick ones)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="report directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.duration > 0:
        plan = replace(plan, point_s=args.duration)
    if args.torch is not None:
        plan = replace(plan, torch=args.torch)
    # SIGTERM unwinds like Ctrl-C, so the server and load generator are always stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run(plan, args.generator, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
