"""The result cache under load: the real model on CPU, the cache on against off.

`python -m loadtest.cache` (in `make bench`; `--quick` or BENCH_QUICK=1 for the short
run) starts two servers with the default settings and `minilm`, one with the result cache
(ENCODER_CACHE_BYTES at its default) and one without (ENCODER_CACHE_BYTES=0), and runs
closed loops of single-text `/encode` requests at `--clients` against each in turn,
alternating which goes first from round to round (only one is loaded at a time; the idle
one holds memory, not cores). Two loads:

- repeats: half the requests repeat one of 1,000 texts (drawn at random), the other half
  are texts never sent before. Both servers first get the 1,000 texts once, so the
  measurement is the steady state of a service whose repeated inputs are already cached
  (a hit ratio of about one half, read from /metrics);
- unique: every text is new, the cache's worst case: it only costs (a lookup and an
  insertion per input).

Writes cache.md and cache.json into --out (default loadtest/results): per round and load,
sequences/s, p50 and p99 of each server, the ratio on ÷ off, and the hit ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import date
from pathlib import Path

from loadtest.client import LoadOutcome, LoadSpec, run_load
from loadtest.machine import describe_machine
from loadtest.options import add_run_options
from loadtest.server import ROOT, RunningServer, bench_server, model_samples, scrape, wait_idle
from loadtest.texts import TextSource
from loadtest.wrk import run_wrk, wrk_path

MODEL = "minilm"
HOT_TEXTS = 1000
REPEAT_SHARE = 0.5
WARM_BATCH = 32  # texts per warm-up request
POOL = 20_000  # texts per load point: far more than a point sends, so none wraps
LOADS = ("repeats", "unique")


def counts(server: RunningServer) -> tuple[float, float]:
    samples = model_samples(scrape(server), MODEL)
    return samples.get("encoder_cache_hits_total", 0.0), samples.get(
        "encoder_cache_misses_total", 0.0
    )


def warm(server: RunningServer, hot: list[str]) -> None:
    """Send the repeated texts once, as the traffic before the measurement would have."""
    import httpx

    with httpx.Client(base_url=server.url, timeout=120) as client:
        for start in range(0, len(hot), WARM_BATCH):
            answer = client.post("/encode", json={"inputs": hot[start : start + WARM_BATCH]})
            answer.raise_for_status()


def pool_of(load: str, source: TextSource, hot: list[str], rng: random.Random) -> list[str]:
    """The texts of one point, in the order they are sent."""
    fresh = source.take(POOL)
    if load == "unique":
        return fresh
    return [rng.choice(hot) if rng.random() < REPEAT_SHARE else text for text in fresh]


def run_point(
    server: RunningServer, texts: list[str], clients: int, seconds: float, generator: str
) -> tuple[LoadOutcome, float, float | None]:
    """The load's outcome, the server's CPU seconds over it (the tail it answered after
    the window included) and the cache's hit ratio."""
    spec = LoadSpec("127.0.0.1", server.port, texts, 1, seconds, clients)
    hits_before, misses_before = counts(server)
    cpu_before = server.cpu_seconds()
    outcome = run_wrk(spec) if generator == "wrk" else run_load(spec)
    wait_idle(server, MODEL)
    cpu_s = server.cpu_seconds() - cpu_before
    hits, misses = counts(server)
    looked_up = (hits - hits_before) + (misses - misses_before)
    return outcome, cpu_s, ((hits - hits_before) / looked_up if looked_up else None)


def measure(rounds: int, seconds: float, clients: int, generator: str) -> list[dict[str, object]]:
    hot = TextSource(seed=97).take(HOT_TEXTS)
    source = TextSource(seed=31)
    rng = random.Random(5)
    base = {"ENCODER_MODELS": MODEL}
    points: list[dict[str, object]] = []
    with (
        bench_server(base) as cached,
        bench_server({**base, "ENCODER_CACHE_BYTES": "0"}) as uncached,
    ):
        for server in (cached, uncached):
            warm(server, hot)
        for round_index in range(rounds):
            order = [("on", cached), ("off", uncached)]
            if round_index % 2:
                order.reverse()
            for load in LOADS:
                # Both servers get the same texts in a point, so neither has easier ones.
                texts = pool_of(load, source, hot, rng)
                for cache, server in order:
                    outcome, cpu_s, hit_ratio = run_point(
                        server, texts, clients, seconds, generator
                    )
                    rate = outcome.answered / outcome.window_s
                    cpu_ms = 1000 * cpu_s / max(outcome.answered, 1)
                    points.append(
                        {
                            "round": round_index + 1,
                            "load": load,
                            "cache": cache,
                            "sequences_per_s": round(rate, 1),
                            "p50_ms": round(outcome.p50_ms, 1),
                            "p99_ms": round(outcome.p99_ms, 1),
                            "cpu_ms_per_request": round(cpu_ms, 2),
                            "hit_ratio": None if hit_ratio is None else round(hit_ratio, 3),
                            "errors": outcome.errors,
                        }
                    )
                    print(
                        f"round {round_index + 1}, {load:>7}, cache {cache:>3}: {rate:7.1f}/s, "
                        f"p50 {outcome.p50_ms:.1f} ms, {cpu_ms:.2f} ms CPU a request, "
                        f"hits {hit_ratio}",
                        flush=True,
                    )
                    time.sleep(1)  # let the cores settle between servers
    return points


def ratios(
    points: list[dict[str, object]], load: str, field: str = "sequences_per_s"
) -> list[float]:
    """Per round, `field` with the cache ÷ without (sequences/s); for CPU per request,
    without ÷ with, so above 1 is the cache's gain either way."""
    by_round: dict[object, dict[object, float]] = {}
    for point in points:
        if point["load"] == load:
            by_round.setdefault(point["round"], {})[point["cache"]] = float(
                point[field]  # type: ignore[arg-type]
            )
    found = [pair for pair in by_round.values() if pair.get("on") and pair.get("off")]
    if field == "sequences_per_s":
        return [round(pair["on"] / pair["off"], 2) for pair in found]
    return [round(pair["off"] / pair["on"], 2) for pair in found]


def write_report(
    points: list[dict[str, object]],
    rounds: int,
    seconds: float,
    clients: int,
    generator: str,
    out: Path,
    command: str = "python -m loadtest.cache",
) -> None:
    summary = {load: ratios(points, load) for load in LOADS}
    cpu_summary = {load: ratios(points, load, "cpu_ms_per_request") for load in LOADS}
    report = {
        "date": date.today().isoformat(),
        "model": MODEL,
        "clients": clients,
        "rounds": rounds,
        "seconds_per_point": seconds,
        "generator": generator,
        "hot_texts": HOT_TEXTS,
        "repeat_share": REPEAT_SHARE,
        "machine": describe_machine(),
        "on_over_off": summary,
        "cpu_per_request_off_over_on": cpu_summary,
        "points": points,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "cache.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = "\n".join(
        f"| {p['round']} | {p['load']} | {p['cache']} | {p['sequences_per_s']} | {p['p50_ms']} | "
        f"{p['p99_ms']} | {p['cpu_ms_per_request']} | "
        f"{'—' if p['hit_ratio'] is None else p['hit_ratio']} | {p['errors']} |"
        for p in points
    )

    def line(values: list[float]) -> str:
        if not values:
            return "no complete round"
        median = statistics.median(values)
        return f"**{median:.2f}** (median; rounds: {', '.join(f'{v:.2f}' for v in values)})"

    machine = report["machine"]
    (out / "cache.md").write_text(
        f"# The result cache under load ({report['date']})\n\n"
        f"`{command}`: `{MODEL}` on the CPU, "
        "default settings (one worker), two servers started once — the cache at its default "
        "size, and `ENCODER_CACHE_BYTES=0` — loaded one at a time, alternating which goes "
        f"first; single-text `/encode`, {clients} closed-loop clients by {generator}, "
        f"{seconds:g} s a point, {rounds} round(s), on {machine['cores_usable']} cores "
        f"({machine['cpu_model']}; load average {machine['load_average_at_start']} at the "
        "start).\n\n"
        f"- **repeats**: half the requests repeat one of {HOT_TEXTS:,} texts (sent to both "
        "servers once before the rounds, so the cache holds them), half are new texts. "
        f"Throughput with the cache ÷ without: {line(summary['repeats'])}; target ≥ 1.7. "
        "The server's CPU per request without ÷ with (what the same cores can serve, less "
        f"sensitive to other load on the machine): {line(cpu_summary['repeats'])}.\n"
        f"- **unique**: every text new. Throughput with ÷ without: "
        f"{line(summary['unique'])}; target: within noise of 1. CPU per request without ÷ "
        f"with: {line(cpu_summary['unique'])}.\n\n"
        "The hit ratio is the server's own (`encoder_cache_hits_total` ÷ hits and misses "
        "over the point); CPU per request is the server's CPU seconds over the point (the "
        "requests still in flight when the load stopped included) ÷ requests answered.\n\n"
        "| round | load | cache | sequences/s | p50 ms | p99 ms | CPU ms a request | "
        "hit ratio | errors |\n"
        "|---:|---|---|---:|---:|---:|---:|---:|---:|\n"
        f"{rows}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=0, help="default 3 (quick: 2)")
    add_run_options(
        parser, quick="2 rounds of 5 s a point", duration="seconds a point (default 10; quick 5)"
    )
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 3)
    seconds = args.duration or (5.0 if args.quick else 10.0)
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if wrk_path() else "asyncio"
    points = measure(rounds, seconds, args.clients, generator)
    command = " ".join(["python -m loadtest.cache", *sys.argv[1:]])
    if args.quick and "--quick" not in sys.argv:
        command = f"BENCH_QUICK=1 {command}"
    write_report(points, rounds, seconds, args.clients, generator, args.out, command)
    print(f"wrote {args.out / 'cache.md'}")


if __name__ == "__main__":
    main()
