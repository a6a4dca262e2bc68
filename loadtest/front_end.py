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
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import asdict
from datetime import date
from pathlib import Path

from loadtest.client import LoadSpec, run_load
from loadtest.machine import describe_machine
from loadtest.options import quick_from_env
from loadtest.server import running_server
from loadtest.texts import TextSource
from loadtest.wrk import run_wrk, wrk_path

ROOT = Path(__file__).resolve().parent.parent
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
            env = {
                "ENCODER_BACKEND": backend,
                "ENCODER_MODELS": "minilm",
                "ENCODER_MODELS_DIR": str(ROOT / "models"),
                "ENCODER_LOG_LEVEL": "warning",
                "ENCODER_WORKERS": str(count),
            }
            with (
                tempfile.TemporaryDirectory() as scratch,
                running_server(env, Path(scratch) / "server.log") as server,
            ):
                for users in clients:
                    spec = LoadSpec(
                        "127.0.0.1", server.port, source.take(TEXTS_PER_POINT), 1, seconds, users
                    )
                    cpu_before = server.cpu_seconds()
                    outcome = generator_runs(spec)
                    server_cpu = server.cpu_seconds() - cpu_before
                    rate = outcome.answered / outcome.window_s
                    requests = rate * outcome.wall_s  # served over the generator's whole run
                    points.append(
                        {
                            "round": round_index + 1,
                            "workers": count,
                            "clients": users,
                            "requests_per_s": round(rate, 1),
                            "server_cpu_cores": round(server_cpu / outcome.wall_s, 2),
                            "server_cpu_us_per_request": round(1e6 * server_cpu / requests),
                            "generator_cpu_us_per_request": round(1e6 * outcome.cpu_s / requests),
                            **asdict(outcome),
                        }
                    )
                    print(
                        f"round {round_index + 1}, {count} worker(s), {users:>3} clients: "
                        f"{rate:8.1f} requests/s, p50 {outcome.p50_ms:.1f} ms",
                        flush=True,
                    )
    return points


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
    report = {
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results")
    quick = quick_from_env()  # as `make bench` is run
    parser.add_argument("--seconds", type=float, default=4.0 if quick else 10.0)
    parser.add_argument("--rounds", type=int, default=1 if quick else 2)
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--workers", type=int, nargs="+", default=list(WORKERS))
    parser.add_argument(
        "--backend",
        default="benchmark-fixed",
        help="benchmark-fixed (the front end alone, front-end.md) or onnx (the real model, "
        "workers-onnx.md)",
    )
    args = parser.parse_args()
    workers, clients = tuple(args.workers), tuple(args.clients)
    points = measure(workers, clients, args.seconds, args.rounds, args.backend)
    write_report(points, workers, clients, args.out, args.backend)


if __name__ == "__main__":
    main()
