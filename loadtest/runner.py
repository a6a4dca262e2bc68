"""Load points against a running server: the generator, the metrics deltas, one report row."""

from __future__ import annotations

import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from loadtest.client import LoadOutcome, LoadSpec, run_load
from loadtest.report import LoadPoint
from loadtest.server import RunningServer, batch_counters, wait_idle
from loadtest.texts import TextSource
from loadtest.wrk import run_wrk

MODEL = "minilm"  # the one model the bench serves (ENCODER_MODELS)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class LoadRunner:
    """Runs load points against one server and turns what came back into report rows."""

    def __init__(
        self, server: RunningServer, use_wrk: bool, texts: TextSource, rate_bound: float
    ) -> None:
        self.server = server
        self.use_wrk = use_wrk
        self.texts = texts
        self.rate_bound = rate_bound  # sequences/s no load point can exceed
        context = multiprocessing.get_context("spawn")
        # One long-lived generator process: its start-up is paid once, in the warm-up.
        self._generators = ProcessPoolExecutor(1, mp_context=context)

    def close(self) -> None:
        self._generators.shutdown(wait=True, cancel_futures=True)

    def closed(
        self, label: str, clients: int, duration_s: float, texts_per_request: int = 1
    ) -> LoadPoint:
        """`clients` clients, each sending its next request when the last is answered."""
        texts = self.texts.take(texts_for(self.rate_bound, duration_s))
        spec = LoadSpec(
            "127.0.0.1", self.server.port, texts, texts_per_request, duration_s, clients=clients
        )
        return self.point(label, "closed" if texts_per_request == 1 else "batch", spec)

    def open(self, label: str, rate: float, duration_s: float) -> LoadPoint:
        """Single-text requests at `rate` per second, answered or not."""
        texts = self.texts.take(texts_for(rate, duration_s))
        spec = LoadSpec("127.0.0.1", self.server.port, texts, 1, duration_s, rate=rate)
        return self.point(label, "open", spec)

    def generate(self, spec: LoadSpec) -> tuple[LoadOutcome, str]:
        # wrk cannot hold a fixed arrival rate; the open loop always uses the asyncio client.
        if self.use_wrk and spec.rate is None:
            return run_wrk(spec), "wrk"
        return self._generators.submit(run_load, spec).result(), "asyncio"

    def point(self, label: str, mode: str, spec: LoadSpec) -> LoadPoint:
        wait_idle(self.server, MODEL)
        before, cpu_before = batch_counters(self.server, MODEL), self.server.cpu_seconds()
        started = time.perf_counter()
        outcome, generator = self.generate(spec)
        server_cpu = (self.server.cpu_seconds() - cpu_before) / (time.perf_counter() - started)
        # Counted once the last requests of this point have run, so they count here.
        wait_idle(self.server, MODEL)
        counters = batch_counters(self.server, MODEL) - before
        point = LoadPoint(
            label=label,
            mode=mode,
            clients=spec.clients,
            target_rate=spec.rate,
            texts_per_request=spec.texts_per_request,
            duration_s=outcome.window_s,
            requests=outcome.requests,
            answered=outcome.answered,
            errors=outcome.errors,
            sequences_per_s=outcome.answered * spec.texts_per_request / outcome.window_s,
            p50_ms=outcome.p50_ms,
            p90_ms=outcome.p90_ms,
            p99_ms=outcome.p99_ms,
            generator=generator,
            generator_cpu_cores=outcome.cpu_s / outcome.wall_s,
            server_cpu_cores=server_cpu,
            mean_batch_size=counters.mean_batch_size,
            padding_share=counters.padding_share(spec.texts_per_request),
            dispatch_lag_p99_ms=outcome.dispatch_lag_p99_ms,
            pool_wraps=outcome.pool_wraps,
        )
        log(
            f"  {label:<22} {point.sequences_per_s:7.1f} seq/s  p50 {point.p50_ms:7.1f} ms  "
            f"p99 {point.p99_ms:7.1f} ms  batch {point.mean_batch_size or 0:5.1f}  "
            f"answered {100 * point.answered_share:3.0f} %  {generator} CPU "
            f"{point.generator_cpu_cores:.2f}"
        )
        return point


def texts_for(rate_bound: float, duration_s: float) -> int:
    """Enough fresh texts that a run at up to `rate_bound` sequences/s never repeats one."""
    return int(rate_bound * (duration_s + 2)) + 256
