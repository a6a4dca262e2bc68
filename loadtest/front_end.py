"""What the server around the engine sustains on its own, by worker processes.

`python -m loadtest.front_end [--workers 1 2] [--clients 1 8 32 128] [--out DIR]` starts
the server with ENCODER_BACKEND=benchmark-fixed (no model runs; every answer is the same
vector), so HTTP, validation, tokenization, batching, the hop to the engine process,
serialization, metrics and logs are all that costs, and runs closed loops of single-text
/encode requests at a few client counts. Each worker count gets a fresh server per
round, and the rounds alternate which count goes first (the machine drifts between
runs). With one worker the server is one process; with more, HTTP workers plus an engine
process (app/processes.py). Writes front-end.md and front-end.json into DIR (default
loadtest/results). `make bench` runs it after `loadtest.bench` (BENCH_QUICK=1: one round
of 4 s per point).

**The floor** (`loadtest/floor.py`): in the same sitting, the server (benchmark-fixed, 1
worker, one process) and the floor (a minimal ASGI application under the same uvicorn,
uvloop and httptools that only parses, tokenizes and answers) alternate per round at 32
clients on single-text `/encode`, `/v1/embeddings` and `/classify` (the `sentiment`
classifier); floor.md and floor.json give each one's CPU per request and their ratio, the
price of everything the server does around the engine beyond what Python must.
At least 2 rounds, at most 5 s per route; `--floor-only` runs that comparison alone (2
rounds of 3 s per route: about a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

from loadtest.client import LoadOutcome, LoadSpec, run_load
from loadtest.floor import CLASSIFIER, EMBEDDING_MODEL, floor_command
from loadtest.machine import describe_machine
from loadtest.options import quick_from_env
from loadtest.server import (
    ROOT,
    RunningServer,
    bench_server,
    free_port,
    running_process,
    running_server,
)
from loadtest.texts import TextSource
from loadtest.wrk import run_wrk, wrk_path

CLIENTS = (1, 8, 32, 128)  # 128: where two workers saturate both cores
WORKERS = (1, 2)
TEXTS_PER_POINT = 40_000  # more than a 10 s point sends at the rates seen: each text fresh


def measure(
    workers: tuple[int, ...],
    clients: tuple[int, ...],
    seconds: float,
    rounds: int,
    backend: str = "benchmark-fixed",
) -> list[dict[str, object]]:
    generator_runs = run_wrk if wrk_path() else run_load
    points: list[dict[str, object]] = []
    source = TextSource(seed=5)
    for round_index in range(rounds):
        order = workers if round_index % 2 == 0 else tuple(reversed(workers))
        for count in order:
            settings = {
                "ENCODER_BACKEND": backend,
                "ENCODER_MODELS": "minilm",
                "ENCODER_WORKERS": str(count),
            }
            with bench_server(settings) as server:
                for users in clients:
                    spec = LoadSpec(
                        "127.0.0.1", server.port, source.take(TEXTS_PER_POINT), 1, seconds, users
                    )
                    point = load_point(server, spec, generator_runs)
                    points.append(
                        {"round": round_index + 1, "workers": count, "clients": users, **point}
                    )
                    print(
                        f"round {round_index + 1}, {count} worker(s), {users:>3} clients: "
                        f"{point['requests_per_s']:8.1f} requests/s, "
                        f"p50 {point['p50_ms']:.1f} ms",
                        flush=True,
                    )
    return points


def load_point(
    server: RunningServer, spec: LoadSpec, generator_runs: Callable[[LoadSpec], LoadOutcome]
) -> dict[str, Any]:
    """One closed-loop run against `server`: its rate, and the CPU a request cost the
    server's process tree and the generator."""
    cpu_before = server.cpu_seconds()
    outcome = generator_runs(spec)
    server_cpu = server.cpu_seconds() - cpu_before
    rate = outcome.answered / outcome.window_s
    requests = max(rate * outcome.wall_s, 1.0)  # served over the generator's whole run
    return {
        "requests_per_s": round(rate, 1),
        "server_cpu_cores": round(server_cpu / outcome.wall_s, 2),
        "server_cpu_us_per_request": round(1e6 * server_cpu / requests),
        "generator_cpu_us_per_request": round(1e6 * outcome.cpu_s / requests),
        **asdict(outcome),
    }


def median_rate(points: list[dict[str, object]], workers: int, clients: int) -> float:
    rates = [
        float(p["requests_per_s"])  # type: ignore[arg-type]
        for p in points
        if p["workers"] == workers and p["clients"] == clients
    ]
    return statistics.median(rates)


def peak(
    points: list[dict[str, object]], workers: int, clients: tuple[int, ...]
) -> tuple[float, int]:
    """The most requests/s a worker count sustained (median over rounds), and at how many
    clients: what it can do at all, whatever concurrency it needs for that."""
    return max((median_rate(points, workers, users), users) for users in clients)


def write_report(
    points: list[dict[str, object]],
    workers: tuple[int, ...],
    clients: tuple[int, ...],
    out: Path,
    backend: str = "benchmark-fixed",
) -> None:
    generator = "wrk" if wrk_path() else "asyncio client"
    stem = "front-end" if backend == "benchmark-fixed" else f"workers-{backend}"
    report: dict[str, Any] = {
        "date": date.today().isoformat(),
        "backend": backend,
        "generator": generator,
        "machine": describe_machine(),
        "points": points,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = "\n".join(
        f"| {p['round']} | {p['workers']} | {p['clients']} | {p['requests_per_s']} | "
        f"{p['p50_ms']:.1f} | {p['p99_ms']:.1f} | {p['errors']} | {p['server_cpu_cores']} | "
        f"{p['server_cpu_us_per_request']} | {p['generator_cpu_us_per_request']} |"
        for p in points
    )
    base = workers[0]
    ratios = "\n".join(
        f"| {users} | "
        + " | ".join(f"{median_rate(points, count, users):.0f}" for count in workers)
        + " | "
        + " | ".join(
            f"{median_rate(points, count, users) / median_rate(points, base, users):.2f}"
            for count in workers[1:]
        )
        + " |"
        for users in clients
    )
    peaks = {count: peak(points, count, clients) for count in workers}
    ratios += (
        "\n| peak (at clients) | "
        + " | ".join(f"{rate:.0f} ({users})" for rate, users in peaks.values())
        + " | "
        + " | ".join(f"{peaks[count][0] / peaks[base][0]:.2f}" for count in workers[1:])
        + " |"
    )
    headers = " | ".join(f"{count} worker(s)" for count in workers)
    ratio_headers = " | ".join(f"{count} ÷ {base}" for count in workers[1:])
    machine = report["machine"]
    cores = machine["cores_usable"]
    what = (
        "ENCODER_BACKEND=benchmark-fixed (no model runs)"
        if backend == "benchmark-fixed"
        else f"ENCODER_BACKEND={backend} with the real `minilm`"
    )
    title = "Front end alone" if backend == "benchmark-fixed" else "The server"
    (out / f"{stem}.md").write_text(
        f"# {title}, by worker processes ({report['date']})\n\n"
        f"`python -m loadtest.front_end --backend {backend}`: {what}, "
        f"single-text `/encode`, closed loop by {generator} on the same machine "
        f"({cores} cores), a fresh server per worker count and round, "
        "the first worker count alternating between rounds. One worker is one process; "
        "more are HTTP workers plus the engine process.\n\n"
        "Median requests/s over the rounds; the last row compares each worker count at its "
        "own best client count:\n\n"
        f"| clients | {headers} | {ratio_headers} |\n"
        f"|---:|{'---:|' * len(workers)}{'---:|' * (len(workers) - 1)}\n"
        f"{ratios}\n\n"
        "Every run:\n\n"
        "Server CPU is every process of the server (supervisor, workers, engine), all "
        "threads; the generator's is wrk's (or the asyncio client's). On a machine of C "
        "cores no rate can pass C ÷ (server + generator CPU per request).\n\n"
        "| round | workers | clients | requests/s | p50 ms | p99 ms | errors | server CPU "
        "(cores) | server CPU µs/request | generator CPU µs/request |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        f"{rows}\n"
    )


@dataclass(frozen=True)
class FloorRoute:
    """A route the floor is measured on, with the issue's target for the server ÷ floor ratio."""

    path: str
    input_field: str
    model: str | None
    target: float


FLOOR_ROUTES = (
    FloorRoute("/encode", "inputs", None, 1.5),
    FloorRoute("/v1/embeddings", "input", EMBEDDING_MODEL, 1.8),
    FloorRoute("/classify", "inputs", CLASSIFIER, 1.8),
)
FLOOR_CLIENTS = 32  # the target point
FLOOR = "floor"
SERVER = "server"
WARM_UP_S = 1.0
FLOOR_SECONDS_MAX = 5.0


@contextmanager
def running_floor(log_path: Path) -> Iterator[RunningServer]:
    """The floor (loadtest/floor.py) in its own process on a free loopback port."""
    port = free_port()
    with running_process(floor_command(port), dict(os.environ), ROOT, port, log_path) as floor:
        yield floor


def running_target(target: str, log_path: Path) -> Any:
    if target == FLOOR:
        return running_floor(log_path)
    env = {
        "ENCODER_BACKEND": "benchmark-fixed",
        "ENCODER_MODELS": f"{EMBEDDING_MODEL},{CLASSIFIER}",
        "ENCODER_MODELS_DIR": str(ROOT / "models"),
        "ENCODER_LOG_LEVEL": "warning",
        "ENCODER_WORKERS": "1",
    }
    return running_server(env, log_path)


def measure_floor(
    seconds: float,
    rounds: int,
    clients: int = FLOOR_CLIENTS,
    routes: Sequence[FloorRoute] = FLOOR_ROUTES,
) -> list[dict[str, Any]]:
    """The floor and the server, alternating which goes first per round, a fresh process
    each, every route at `clients` after a short warm-up."""
    generator_runs = run_wrk if wrk_path() else run_load
    points: list[dict[str, Any]] = []
    source = TextSource(seed=7)
    for round_index in range(rounds):
        order = (FLOOR, SERVER) if round_index % 2 == 0 else (SERVER, FLOOR)
        for target in order:
            with (
                tempfile.TemporaryDirectory() as scratch,
                running_target(target, Path(scratch) / f"{target}.log") as process,
            ):
                warm_up = LoadSpec(
                    "127.0.0.1", process.port, source.take(5_000), 1, WARM_UP_S, clients
                )
                generator_runs(warm_up)
                for route in routes:
                    spec = LoadSpec(
                        "127.0.0.1",
                        process.port,
                        source.take(TEXTS_PER_POINT),
                        1,
                        seconds,
                        clients,
                        path=route.path,
                        input_field=route.input_field,
                        model=route.model,
                    )
                    point = load_point(process, spec, generator_runs)
                    points.append(
                        {
                            "round": round_index + 1,
                            "target": target,
                            "route": route.path,
                            "clients": clients,
                            **point,
                        }
                    )
                    print(
                        f"round {round_index + 1}, {target:<6} {route.path:<15}: "
                        f"{point['requests_per_s']:8.1f} requests/s, "
                        f"{point['server_cpu_us_per_request']:5d} µs CPU/request",
                        flush=True,
                    )
    return points


def floor_summary(
    points: list[dict[str, Any]], routes: Sequence[FloorRoute] = FLOOR_ROUTES
) -> list[dict[str, Any]]:
    """Per route: the median over rounds of each one's CPU µs per request and requests/s,
    and the server's CPU per request ÷ the floor's (the issue's ratio) against its target."""

    def median(target: str, path: str, key: str) -> float | None:
        values = [float(p[key]) for p in points if p["target"] == target and p["route"] == path]
        return statistics.median(values) if values else None

    summary = []
    for route in routes:
        floor_cpu = median(FLOOR, route.path, "server_cpu_us_per_request")
        server_cpu = median(SERVER, route.path, "server_cpu_us_per_request")
        if floor_cpu is None or server_cpu is None:
            continue
        ratio = server_cpu / floor_cpu if floor_cpu else None
        summary.append(
            {
                "route": route.path,
                "floor_cpu_us_per_request": floor_cpu,
                "server_cpu_us_per_request": server_cpu,
                "ratio": None if ratio is None else round(ratio, 2),
                "target": route.target,
                "meets_target": ratio is not None and ratio <= route.target,
                "floor_requests_per_s": median(FLOOR, route.path, "requests_per_s"),
                "server_requests_per_s": median(SERVER, route.path, "requests_per_s"),
            }
        )
    return summary


def floor_markdown(report: dict[str, Any]) -> str:
    summary = "\n".join(
        f"| `{row['route']}` | {row['floor_cpu_us_per_request']:.0f} | "
        f"{row['server_cpu_us_per_request']:.0f} | **{row['ratio']:.2f}** | "
        f"≤ {row['target']} | {'yes' if row['meets_target'] else 'no'} | "
        f"{row['floor_requests_per_s']:.0f} | {row['server_requests_per_s']:.0f} |"
        for row in report["summary"]
    )
    rows = "\n".join(
        f"| {p['round']} | {p['target']} | `{p['route']}` | {p['requests_per_s']} | "
        f"{p['p50_ms']:.1f} | {p['p99_ms']:.1f} | {p['errors']} | {p['server_cpu_cores']} | "
        f"{p['server_cpu_us_per_request']} | {p['generator_cpu_us_per_request']} |"
        for p in report["points"]
    )
    cores = report["machine"]["cores_usable"]
    return (
        f"# The floor beside the server ({report['date']})\n\n"
        f"`python -m loadtest.front_end --floor-only` (or a full `python -m "
        f"loadtest.front_end`): the server with ENCODER_BACKEND=benchmark-fixed, 1 worker "
        f"(one process), against the floor (`loadtest/floor.py`: a plain ASGI application "
        f"under the same uvicorn, uvloop and httptools that reads the body, parses it with "
        f"orjson, tokenizes the text with the same `tokenizer.json` and answers the same "
        f"shape with orjson, and does nothing else). Single-text requests, "
        f"{report['clients']} closed-loop clients by {report['generator']} on the same "
        f"machine ({cores} cores), {report['seconds']:g} s per route after a "
        f"{WARM_UP_S:g} s warm-up, {report['rounds']} round(s), a fresh process per round, "
        "which one goes first alternating between rounds. `/classify` is the "
        f"`{CLASSIFIER}` classifier (fixed zero logits in both).\n\n"
        "CPU per request is user + system time of the process (all threads) over the "
        "requests it answered during the generator's run; the ratio is the server's ÷ the "
        "floor's, medians over the rounds, the issue's targets beside it:\n\n"
        "| route | floor CPU µs/request | server CPU µs/request | server ÷ floor | target "
        "| met | floor requests/s | server requests/s |\n"
        "|---|---:|---:|---:|---:|---|---:|---:|\n"
        f"{summary}\n\n"
        "Every run:\n\n"
        "| round | target | route | requests/s | p50 ms | p99 ms | errors | CPU (cores) | "
        "CPU µs/request | generator CPU µs/request |\n"
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
        f"{rows}\n"
    )


def write_floor_report(
    points: list[dict[str, Any]], seconds: float, rounds: int, clients: int, out: Path
) -> dict[str, Any]:
    report = {
        "date": date.today().isoformat(),
        "generator": "wrk" if wrk_path() else "asyncio client",
        "clients": clients,
        "seconds": seconds,
        "rounds": rounds,
        "machine": describe_machine(),
        "summary": floor_summary(points),
        "points": points,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "floor.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "floor.md").write_text(floor_markdown(report))
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results")
    quick = quick_from_env()  # as `make bench` is run
    parser.add_argument("--seconds", type=float, help="per point (default 10, quick 4)")
    parser.add_argument("--rounds", type=int, help="(default 2, quick 1)")
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--workers", type=int, nargs="+", default=list(WORKERS))
    parser.add_argument(
        "--backend",
        default="benchmark-fixed",
        help="benchmark-fixed (the front end alone, front-end.md, and the floor, floor.md) or "
        "onnx (the real model, workers-onnx.md; no floor)",
    )
    parser.add_argument(
        "--floor-only",
        action="store_true",
        help="only the floor against the server (floor.md; default 2 rounds of 3 s per route)",
    )
    args = parser.parse_args(argv)
    if args.floor_only:
        seconds = args.seconds or 3.0
        rounds = args.rounds or 2
    else:
        seconds = args.seconds or (4.0 if quick else 10.0)
        rounds = args.rounds or (1 if quick else 2)
        workers, clients = tuple(args.workers), tuple(args.clients)
        points = measure(workers, clients, seconds, rounds, args.backend)
        write_report(points, workers, clients, args.out, args.backend)
    if args.backend == "benchmark-fixed":
        # At least two rounds, so each goes first once; at most 5 s a route (make bench).
        seconds, rounds = min(seconds, FLOOR_SECONDS_MAX), max(rounds, 2)
        floor_points = measure_floor(seconds, rounds)
        report = write_floor_report(floor_points, seconds, rounds, FLOOR_CLIENTS, args.out)
        for row in report["summary"]:
            print(
                f"{row['route']:<15} floor {row['floor_cpu_us_per_request']:.0f} µs, server "
                f"{row['server_cpu_us_per_request']:.0f} µs: {row['ratio']} × "
                f"(target ≤ {row['target']})"
            )


if __name__ == "__main__":
    main()
