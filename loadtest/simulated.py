"""The server against a simulated accelerator (ENCODER_BACKEND=benchmark-sim), by workers.

`python -m loadtest.simulated [--workers 1 2] [--clients 1 32 128 512] [--seconds 4]` starts
the server with the simulated device (each pass sleeps `--pass-us` + `--token-us` x padded
tokens, holding no core) and runs closed loops of single-text /encode requests. The device
is set slower than the H200 defaults, to a capacity the front end can feed on a small
machine (about half of what the front end alone serves with 2 workers on the 2-core
development machine, loadtest/results/front-end.md: 2,971/s), so the question is the one a
GPU host asks: does the server keep its device busy?

Per point: sequences/s against the simulated engine limit (full batches of
ENCODER_MAX_BATCH_SIZE of these texts, back to back) and against the ceiling at that
concurrency (a pass can hold at most one text per client), the mean pass size, and the
device duty cycle from /metrics (the rate of encoder_device_busy_seconds_total over the
point); at 1 client, p50 against one simulated pass of a median text (issue #30's target:
p50 <= one pass + 1 ms). Writes simulated.md and simulated.json into --out (default
loadtest/results).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from datetime import date
from pathlib import Path

from loadtest.client import LoadSpec, run_load
from loadtest.machine import busy_notes, describe_machine, load_average
from loadtest.server import ROOT, bench_server, model_samples, scrape, wait_idle
from loadtest.texts import TextSource
from loadtest.wrk import run_wrk, wrk_path

MODEL = "minilm"
CLIENTS = (1, 32, 128, 512)
WORKERS = (1, 2)
PASS_US = 25_000.0  # the scratch try: 20 ms + 5 us a token; a little slower here
TOKEN_US = 5.0
MAX_BATCH = 64  # ENCODER_MAX_BATCH_SIZE's default
TEXTS_PER_POINT = 40_000
BUSY = "encoder_device_busy_seconds_total"


def token_counts(texts: list[str]) -> list[int]:
    """Tokens of each text as the server counts them (special tokens included)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(ROOT / "models" / MODEL / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)
    return [len(encoding.ids) for encoding in tokenizer.encode_batch(texts)]


def sequences_per_s(counts: list[int], rows: int, pass_us: float, token_us: float) -> float:
    """What the simulated device sustains in passes of `rows` of these texts, back to back:
    each pass padded to its longest text (mean over random passes)."""
    rng = random.Random(7)
    seconds = [
        (pass_us + token_us * rows * max(rng.sample(counts, rows))) / 1e6 for _ in range(2000)
    ]
    return rows / (sum(seconds) / len(seconds))


def one_pass_ms(counts: list[int], pass_us: float, token_us: float) -> float:
    """One simulated pass of a lone median text: what a single client cannot beat."""
    median = sorted(counts)[len(counts) // 2]
    return (pass_us + token_us * median) / 1e3


def busy_seconds(text: str) -> float:
    return model_samples(text, MODEL).get(BUSY, 0.0)


def passes(text: str) -> tuple[float, float]:
    samples = model_samples(text, MODEL)
    return samples.get("encoder_batch_size_count", 0.0), samples.get("encoder_batch_size_sum", 0.0)


def measure(
    workers: tuple[int, ...],
    clients: tuple[int, ...],
    seconds: float,
    pass_us: float,
    token_us: float,
) -> list[dict[str, object]]:
    generator_runs = run_wrk if wrk_path() else run_load
    source = TextSource(seed=11)
    counts = token_counts(source.take(4000))
    points: list[dict[str, object]] = []
    for count in workers:
        settings = {
            "ENCODER_BACKEND": "benchmark-sim",
            "ENCODER_SIM_PASS_US": str(pass_us),
            "ENCODER_SIM_TOKEN_US": str(token_us),
            "ENCODER_MAX_BATCH_SIZE": str(MAX_BATCH),
            "ENCODER_MODELS": MODEL,
            "ENCODER_WORKERS": str(count),
        }
        with bench_server(settings) as server:
            for users in clients:
                spec = LoadSpec(
                    "127.0.0.1", server.port, source.take(TEXTS_PER_POINT), 1, seconds, users
                )
                before, started = scrape(server), time.monotonic()
                outcome = generator_runs(spec)
                after, ended = scrape(server), time.monotonic()
                wait_idle(server, MODEL)
                rate = outcome.answered / outcome.window_s
                limit = sequences_per_s(counts, MAX_BATCH, pass_us, token_us)
                ceiling = sequences_per_s(counts, min(users, MAX_BATCH), pass_us, token_us)
                duty = (busy_seconds(after) - busy_seconds(before)) / (ended - started)
                (n_after, s_after), (n_before, s_before) = passes(after), passes(before)
                mean_pass = (s_after - s_before) / max(n_after - n_before, 1)
                points.append(
                    {
                        "workers": count,
                        "clients": users,
                        "sequences_per_s": round(rate, 1),
                        "engine_limit": round(limit, 1),
                        "of_limit": round(rate / limit, 2),
                        "ceiling_at_clients": round(ceiling, 1),
                        "of_ceiling": round(rate / ceiling, 2),
                        "duty_cycle": round(duty, 2),
                        "mean_pass_texts": round(mean_pass, 1),
                        "p50_ms": round(outcome.p50_ms, 1),
                        "p50_over_one_pass_ms": round(
                            outcome.p50_ms - one_pass_ms(counts, pass_us, token_us), 2
                        ),
                        "p99_ms": round(outcome.p99_ms, 1),
                        "errors": outcome.errors,
                    }
                )
                print(
                    f"{count} worker(s), {users:>3} clients: {rate:7.1f}/s "
                    f"({rate / limit:.2f} of the limit {limit:.0f}/s), duty {duty:.2f}, "
                    f"passes of {mean_pass:.1f}, p50 {outcome.p50_ms:.1f} ms",
                    flush=True,
                )
    return points


def write_report(
    points: list[dict[str, object]],
    seconds: float,
    pass_us: float,
    token_us: float,
    out: Path,
    load_at_start: str,
) -> None:
    generator = "wrk" if wrk_path() else "asyncio client"
    machine = {**describe_machine(), "load_average_at_start": load_at_start}
    machine["load_average_at_end"] = load_average()
    report = {
        "date": date.today().isoformat(),
        "pass_us": pass_us,
        "token_us": token_us,
        "max_batch_size": MAX_BATCH,
        "one_pass_ms": round(
            one_pass_ms(token_counts(TextSource(seed=11).take(4000)), pass_us, token_us), 2
        ),
        "seconds_per_point": seconds,
        "generator": generator,
        "machine": machine,
        "points": points,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "simulated.json").write_text(json.dumps(report, indent=2) + "\n")
    notes = "".join(f"{note}\n\n" for note in busy_notes(float(load_at_start.split()[0])))
    rows = "\n".join(
        f"| {p['workers']} | {p['clients']} | {p['sequences_per_s']} | {p['of_limit']} | "
        f"{p['ceiling_at_clients']} | {p['of_ceiling']} | {p['duty_cycle']} | "
        f"{p['mean_pass_texts']} | {p['p50_ms']} | {p['p50_over_one_pass_ms']} | "
        f"{p['p99_ms']} | {p['errors']} |"
        for p in points
    )
    limit = points[0]["engine_limit"] if points else 0
    (out / "simulated.md").write_text(
        f"# The server against a simulated accelerator ({report['date']})\n\n"
        f"`python -m loadtest.simulated --seconds {seconds:g}`: ENCODER_BACKEND=benchmark-sim, "
        f"each pass waits {pass_us:g} µs + {token_us:g} µs per padded token (a sleep: no "
        f"core held), ENCODER_MAX_BATCH_SIZE={MAX_BATCH}, single-text `/encode`, closed loop "
        f"by {generator} on the same machine ({machine['cores_usable']} cores), one "
        "server per worker count, one point after the other.\n\n"
        f"Simulated engine limit (full passes of {MAX_BATCH} of these texts back to back): "
        f"**{limit}/s**. The ceiling at a client count is the same with passes of at most "
        "one text per client. Duty cycle: the rate of `encoder_device_busy_seconds_total` "
        "over the point (the share of wall time a pass was in flight; the generator's "
        "start and end are in the window, so it reads a little low). One pass of a lone "
        f"median text: **{report['one_pass_ms']} ms**; at 1 client, p50 − one pass is what "
        "the server adds to it (issue #30's target: at most 1 ms). Load average at the "
        f"start {load_at_start}, at the end {machine['load_average_at_end']}.\n\n"
        f"{notes}"
        "| workers | clients | sequences/s | ÷ limit | ceiling at clients | ÷ ceiling | "
        "duty cycle | mean pass (texts) | p50 ms | p50 − one pass ms | p99 ms | errors |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        f"{rows}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--workers", type=int, nargs="+", default=list(WORKERS))
    parser.add_argument("--pass-us", type=float, default=PASS_US)
    parser.add_argument("--token-us", type=float, default=TOKEN_US)
    args = parser.parse_args()
    workers, clients = tuple(args.workers), tuple(args.clients)
    load_at_start = load_average()
    points = measure(workers, clients, args.seconds, args.pass_us, args.token_us)
    write_report(points, args.seconds, args.pass_us, args.token_us, args.out, load_at_start)


if __name__ == "__main__":
    main()
