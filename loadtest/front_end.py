"""What the server around the engine sustains on its own: the benchmark-only backend.

`python -m loadtest.front_end [--out DIR]` starts the server with
ENCODER_BACKEND=benchmark-fixed (no model runs; every answer is the same vector), so
HTTP, validation, tokenization, batching, serialization, metrics and logs are all that
costs, and runs closed loops of single-text /encode requests at a few client counts.
Writes front-end.md and front-end.json into DIR (default loadtest/results). With
worker processes (issue #16) this is the figure that shows how the front end scales
with cores before a GPU is at hand; today the server is one process.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import asdict
from datetime import date
from pathlib import Path

from loadtest.client import LoadSpec, run_load
from loadtest.machine import describe_machine
from loadtest.server import running_server
from loadtest.texts import TextSource
from loadtest.wrk import run_wrk, wrk_path

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = (1, 8, 32)
TEXTS_PER_POINT = 40_000  # more than a 10 s point sends at the rates seen: each text fresh


def measure(clients: tuple[int, ...], seconds: float, out: Path) -> dict[str, object]:
    env = {
        "ENCODER_BACKEND": "benchmark-fixed",
        "ENCODER_MODELS": "minilm",
        "ENCODER_MODELS_DIR": str(ROOT / "models"),
        "ENCODER_LOG_LEVEL": "warning",
    }
    generator = "wrk" if wrk_path() else "asyncio client"
    points = []
    source = TextSource(seed=5)
    with (
        tempfile.TemporaryDirectory() as scratch,
        running_server(env, Path(scratch) / "server.log") as server,
    ):
        for count in clients:
            texts = source.take(TEXTS_PER_POINT)
            spec = LoadSpec("127.0.0.1", server.port, texts, 1, seconds, count)
            outcome = run_wrk(spec) if wrk_path() else run_load(spec)
            rate = outcome.answered / outcome.window_s
            points.append({"clients": count, "requests_per_s": round(rate, 1), **asdict(outcome)})
            print(f"{count:>3} clients: {rate:8.1f} requests/s, p50 {outcome.p50_ms:.1f} ms")
    report = {
        "date": date.today().isoformat(),
        "backend": "benchmark-fixed",
        "workers": 1,
        "generator": generator,
        "machine": describe_machine(),
        "points": points,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "front-end.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = "\n".join(
        f"| {p['clients']} | {p['requests_per_s']} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} | "
        f"{p['errors']} |"
        for p in points
    )
    (out / "front-end.md").write_text(
        f"# Front end alone ({report['date']})\n\n"
        "`python -m loadtest.front_end`: ENCODER_BACKEND=benchmark-fixed (no model runs), "
        f"single-text `/encode`, closed loop by {generator}, one server process, "
        f"{os.cpu_count()} cores.\n\n"
        "| clients | requests/s | p50 ms | p99 ms | errors |\n|---:|---:|---:|---:|---:|\n"
        f"{rows}\n"
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    args = parser.parse_args()
    measure(tuple(args.clients), args.seconds, args.out)


if __name__ == "__main__":
    main()
