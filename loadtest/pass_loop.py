"""The pass loop alone: how long the simulated device idles between passes, in-process.

`python -m loadtest.pass_loop [--clients 128] [--seconds 4] [--burn-us 0]` builds the
server's own model runner (batcher, pipeline, busy clock) over ENCODER_BACKEND=
benchmark-sim's backend, with no HTTP, and runs closed-loop callers of single texts
against it in one event loop. `--burn-us` spends that much CPU on the event loop per
request (half before, half after), standing in for the HTTP path of a one-worker server.
It prints sequences/s, the duty cycle (busy clock ÷ wall time), the p50 latency, and the
device's idle gaps between passes (from each pass's start and end), so two builds can be
compared without HTTP's noise: run it with PYTHONPATH pointing at each checkout, in turns.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time

import numpy as np

from app.engine.batching.batcher import BatchLimits
from app.engine.manifest import ModelManifest
from app.engine.passes.busy import BusyClock
from app.engine.passes.pipeline import open_pipeline
from app.engine.passes.runner import ModelRunner
from loadtest.server import ROOT
from loadtest.simulated import MAX_BATCH, PASS_US, TOKEN_US
from loadtest.texts import TextSource

WARM_UP_S = 0.5  # passes before this are left out of the gaps


def burn(microseconds: float) -> None:
    """Hold the event loop's thread (and the GIL) this long, as request handling would."""
    end = time.perf_counter() + microseconds / 1e6
    while time.perf_counter() < end:
        pass


async def measure(clients: int, seconds: float, burn_us: float) -> str:
    directory = ROOT / "models" / "minilm"
    manifest = ModelManifest.read(directory)
    busy = [0.0]
    spans: list[tuple[float, float]] = []  # each pass's start and end

    def add(busy_s: float) -> None:
        busy[0] += busy_s

    pipeline = open_pipeline(
        directory,
        manifest,
        engine="benchmark-sim",
        threads=1,
        sim_us=(PASS_US, TOKEN_US),
        busy=BusyClock(add),
    )
    backend_run = pipeline.backend.run

    def timed_run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = backend_run(inputs)
        spans.append((started, time.perf_counter()))
        return outputs

    pipeline.backend.run = timed_run  # type: ignore[method-assign]
    limits = BatchLimits(max_batch_size=MAX_BATCH)
    runner = ModelRunner(manifest, [pipeline], limits, precision="fp32")
    items = pipeline.tokenize(TextSource(seed=11).take(4000))
    runner.batcher.start()
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def caller(first: int) -> None:
        index = first
        while time.monotonic() < stop_at:
            item = items[index % len(items)]
            index += clients
            started = time.perf_counter()
            burn(burn_us / 2)
            await runner.batcher.process([(item, item.tokens)], 30.0)
            burn(burn_us / 2)
            latencies.append(time.perf_counter() - started)

    began, busy_before = time.perf_counter(), busy[0]
    await asyncio.gather(*(caller(k) for k in range(clients)))
    wall = time.perf_counter() - began
    await runner.batcher.stop()
    kept = [span for span in spans if span[0] > began + WARM_UP_S]
    gaps = [later[0] - earlier[1] for earlier, later in itertools.pairwise(kept)]
    gap = (
        f"idle between passes p50 {statistics.median(gaps) * 1e3:.2f} ms, "
        f"mean {statistics.mean(gaps) * 1e3:.2f} ms"
        if gaps
        else "too few passes for gaps"
    )
    return (
        f"{clients} clients, {burn_us:g} µs a request on the loop: "
        f"{len(latencies) / wall:.1f} sequences/s, duty {(busy[0] - busy_before) / wall:.3f}, "
        f"p50 {statistics.median(latencies) * 1e3:.2f} ms, {len(spans)} passes; {gap}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--burn-us", type=float, default=0.0)
    args = parser.parse_args()
    print(asyncio.run(measure(args.clients, args.seconds, args.burn_us)), flush=True)


if __name__ == "__main__":
    main()
