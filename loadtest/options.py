"""Options the benchmarks share, each defaulting to its BENCH_* variable (how `make bench`
and `make bench-peer` are tuned without editing the Makefile)."""

from __future__ import annotations

import argparse
import os


def quick_from_env() -> bool:
    """BENCH_QUICK=1: the short run."""
    return os.environ.get("BENCH_QUICK", "") not in ("", "0")


def add_run_options(parser: argparse.ArgumentParser, *, quick: str, duration: str) -> None:
    """--quick, --duration and --generator; `quick` and `duration` say what they mean here."""
    parser.add_argument(
        "--quick",
        action="store_true",
        default=quick_from_env(),
        help=f"{quick} (also BENCH_QUICK=1)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=float(os.environ.get("BENCH_DURATION_S", 0)),
        help=f"{duration} (also BENCH_DURATION_S)",
    )
    parser.add_argument(
        "--generator",
        choices=["auto", "wrk", "asyncio"],
        default=os.environ.get("BENCH_GENERATOR", "auto"),
        help="closed-loop load generator (auto: wrk when installed; also BENCH_GENERATOR)",
    )
