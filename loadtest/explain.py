"""POST /explain under measurement: latency alone, and its effect on interactive traffic.

    python -m loadtest.explain [--duration 20] [--out loadtest/results]

Starts `encoder-serve serve` on a loopback port (the default models, fp32) and, in one run:

1. **Idle latency**: `occlusion` on a 40-word sentence and `shap` with 256 samples on the
   same sentence, one request at a time (p50, p90);
2. **Interference**: single-text `POST /classify` (default `sentiment`) from 8 closed-loop
   clients for `--duration` s, alone, then the same with 4 more clients requesting `shap`
   explanations (256 samples) in a loop, then alone again; /classify p50/p99 of each
   phase, and the ratio of p99 with explanations to the mean p99 of the two phases
   without (so drift over the run shows).

Writes `explain.md` and `explain.json` under `--out`. Bounded: about 3 × duration plus
the idle rounds and start-up; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.engine.models.explain import WORD
from loadtest.client import percentile
from loadtest.machine import cpu_description, host_name
from loadtest.server import running_server

RESULTS = Path(__file__).resolve().parent / "results"
SENTENCE = (
    "The first half of the film drags with flat dialogue and a plot you can guess, but the "
    "last act surprised me: the two leads are warm and funny, the music lifts every scene "
    "and I left smiling."
)
WORDS = ["river", "market", "film", "coffee", "engine", "garden", "storm", "novel", "music"]
CLASSIFY_CLIENTS = 8
EXPLAIN_CLIENTS = 4


def percentile_ms(values: list[float], share: float) -> float | None:
    """A percentile of seconds, in ms; None (JSON null) when nothing was measured."""
    return 1000 * percentile(sorted(values), share) if values else None


def review(rng: random.Random) -> str:
    """A fresh review of 8-40 words, so no cache helps."""
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 38))]
    return f"{rng.choice(['I loved', 'I hated', 'Nothing beats'])} the {' '.join(words)}."


async def idle_latency(client: httpx.AsyncClient, body: dict[str, object], rounds: int) -> dict:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = await client.post("/explain", json=body)
        response.raise_for_status()
        times.append(time.perf_counter() - started)
    return {
        "rounds": rounds,
        "p50_ms": percentile_ms(times, 0.5),
        "p90_ms": percentile_ms(times, 0.9),
        "evaluations": response.json()["parameters"]["evaluations"],
    }


@dataclass
class Phase:
    classify: list[float]
    classify_errors: int
    explains: list[float]
    explain_errors: int


async def phase(url: str, duration: float, explainers: int, seed: int) -> Phase:
    stop_at = time.monotonic() + duration
    result = Phase([], 0, [], 0)

    async def classify(index: int) -> None:
        rng = random.Random(seed * 100 + index)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                response = await client.post("/classify", json={"inputs": review(rng)})
                if response.status_code == 200:
                    result.classify.append(time.perf_counter() - started)
                else:
                    result.classify_errors += 1

    async def explain(index: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                try:
                    async with asyncio.timeout(stop_at - time.monotonic() + 0.5):
                        response = await client.post(
                            "/explain",
                            json={"inputs": SENTENCE, "method": "shap", "seed": index},
                        )
                except TimeoutError:
                    return  # the phase ended: hang up (the server drops the rest)
                if response.status_code == 200:
                    result.explains.append(time.perf_counter() - started)
                else:
                    result.explain_errors += 1

    await asyncio.gather(
        *(classify(i) for i in range(CLASSIFY_CLIENTS)),
        *(explain(i) for i in range(explainers)),
    )
    return result


def summary(measured: Phase, duration: float) -> dict[str, Any]:
    return {
        "classify_requests": len(measured.classify),
        "classify_per_s": len(measured.classify) / duration,
        "classify_p50_ms": percentile_ms(measured.classify, 0.5),
        "classify_p99_ms": percentile_ms(measured.classify, 0.99),
        "classify_errors": measured.classify_errors,
        "explains": len(measured.explains),
        "explain_p50_ms": percentile_ms(measured.explains, 0.5),
        "explain_errors": measured.explain_errors,
    }


async def measure(url: str, duration: float) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        words = len(WORD.findall(SENTENCE))
        await client.post("/explain", json={"inputs": SENTENCE})  # warm
        occlusion = await idle_latency(client, {"inputs": SENTENCE}, 15)
        shap = await idle_latency(client, {"inputs": SENTENCE, "method": "shap", "samples": 256}, 8)
    phases = {}
    for number, (name, explainers) in enumerate(
        [("classify alone", 0), ("with explanations", EXPLAIN_CLIENTS), ("alone again", 0)]
    ):
        phases[name] = summary(await phase(url, duration, explainers, number), duration)
        print(name, phases[name])
    alone_p99 = (
        phases["classify alone"]["classify_p99_ms"] + phases["alone again"]["classify_p99_ms"]
    ) / 2
    return {
        "sentence_words": words,
        "occlusion_idle": occlusion,
        "shap_256_idle": shap,
        "phases": phases,
        "p99_ratio": phases["with explanations"]["classify_p99_ms"] / alone_p99,
    }


def report(results: dict[str, Any], duration: float, machine: dict[str, str]) -> str:
    occlusion, shap, phases = results["occlusion_idle"], results["shap_256_idle"], results["phases"]
    lines = [
        "# POST /explain: latency and interference",
        "",
        f"`python -m loadtest.explain --duration {duration:g}` on {machine.get('cpu_model', '?')}"
        f" ({machine.get('cores_usable', '?')} cores), default `sentiment`, fp32, one "
        "server process.",
        "",
        f"Idle server, {results['sentence_words']}-word sentence, one request at a time:",
        "",
        "| method | inputs run | p50 | p90 | target |",
        "|---|---|---|---|---|",
        f"| occlusion | {occlusion['evaluations']} | {occlusion['p50_ms']:.0f} ms | "
        f"{occlusion['p90_ms']:.0f} ms | p50 ≤ 300 ms |",
        f"| shap, 256 samples | {shap['evaluations']} | {shap['p50_ms']:.0f} ms | "
        f"{shap['p90_ms']:.0f} ms | p50 ≤ 2 s |",
        "",
        f"Single-text /classify from {CLASSIFY_CLIENTS} closed-loop clients, {duration:g} s per "
        f"phase; in the middle phase {EXPLAIN_CLIENTS} more clients request `shap` (256 "
        "samples) in a loop:",
        "",
        "| phase | /classify per s | p50 | p99 | errors | explanations done | explain p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in phases.items():
        lines.append(
            f"| {name} | {row['classify_per_s']:.1f} | {row['classify_p50_ms']:.0f} ms | "
            f"{row['classify_p99_ms']:.0f} ms | {row['classify_errors']} | {row['explains']} | "
            + (f"{row['explain_p50_ms']:.0f} ms |" if row["explains"] else "– |")
        )
    lines += [
        "",
        f"/classify p99 with explanations ÷ mean p99 without: **{results['p99_ratio']:.2f}** "
        "(target ≤ 1.5).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    env = {"ENCODER_LOG_LEVEL": "warning", "ENCODER_PRECISION": "fp32"}
    log = Path(tempfile.gettempdir()) / "encoder-serve-loadtest-explain.log"
    with running_server(env, log) as server:
        results = asyncio.run(measure(server.url, args.duration))
    machine = cpu_description()
    results["machine"] = {**machine, "host": host_name()}
    args.out.mkdir(parents=True, exist_ok=True)
    text = report(results, args.duration, machine)
    (args.out / "explain.md").write_text(text)
    (args.out / "explain.json").write_text(json.dumps(results, indent=2))
    print(text)


if __name__ == "__main__":
    main()
