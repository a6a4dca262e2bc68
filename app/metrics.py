"""Every Prometheus collector of the server, defined once with its buckets."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

# `*_created` series double the exposition and no dashboard reads them.
disable_created_metrics()

# Durations: sub-millisecond (a cached tiny batch) to tens of seconds (a deadline).
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# Sequences per forward pass: powers of two up to the largest batch anyone configures.
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 … 1024
# Padded tokens per forward pass: powers of two from one short text to a huge batch.
BATCH_TOKEN_BUCKETS = tuple(float(2**i) for i in range(3, 18))  # 8 … 131072


class Metrics:
    """The server's collectors, registered in one registry per app (tests build many apps).

    With worker processes (ENCODER_WORKERS > 1) every process writes its samples to files
    in `multiprocess_dir` (prometheus_client's multiprocess mode, switched on for the
    children by `PROMETHEUS_MULTIPROC_DIR`) and `exposition` merges them: counters and
    histograms add up across processes, gauges follow their `multiprocess_mode`. The
    `process_*` series describe the whole server either way (`ServerProcessCollector`).
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, multiprocess_dir: Path | None = None
    ) -> None:
        """`multiprocess_dir`: given only in an HTTP worker, whose parent, the supervisor,
        is the root of the server's processes; else the server is this process."""
        self.registry = registry or CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir
        self._server_pid = os.getpid() if multiprocess_dir is None else os.getppid()
        ServerProcessCollector(self._server_pid, self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "encoder_requests", "HTTP requests answered.", ["endpoint", "model", "code"], registry=r
        )
        self.request_duration = Histogram(
            "encoder_request_duration_seconds",
            "Time from request arrival to response.",
            ["endpoint", "model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "encoder_queue_wait_seconds",
            "Time an input waited in the batcher queue before its forward pass.",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "encoder_inference_duration_seconds",
            "Time of one batch: padding, forward pass and post-processing.",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "encoder_batch_size",
            "Sequences per forward pass.",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "encoder_batch_tokens",
            "Padded tokens per forward pass.",
            ["model"],
            buckets=BATCH_TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "encoder_queue_depth",
            "Inputs waiting in the batcher queue.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.tokens = Counter(
            "encoder_tokens", "Tokens processed (without padding).", ["model"], registry=r
        )
        self.rejected = Counter(
            "encoder_rejected",
            "Inputs refused or dropped before inference.",
            ["model", "reason"],
            registry=r,
        )
        # Model instances (ENCODER_INSTANCES): how many run a batch now, and batches each ran.
        self.instances_busy = Gauge(
            "encoder_instances_busy",
            "Model instances running a batch now.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.instance_batches = Counter(
            "encoder_instance_batches",
            "Batches run, per model instance.",
            ["model", "instance"],
            registry=r,
        )
        # The device duty cycle: rate() of it is the share of wall time a model had a
        # forward pass in flight (app/engine/passes/busy.py), 1 when passes run back to back.
        self.device_busy = Counter(
            "encoder_device_busy_seconds",
            "Wall time a forward pass of the model was in flight (its instances' passes "
            "counted once when they overlap); rate() is the device duty cycle.",
            ["model"],
            registry=r,
        )
        # The result cache (app/engine/batching/result_cache.py), counted per input in the
        # process that runs the passes, so hits count once however many workers there are.
        self.cache_hits = Counter(
            "encoder_cache_hits",
            "Inputs answered from the result cache (no forward pass).",
            ["model"],
            registry=r,
        )
        self.cache_misses = Counter(
            "encoder_cache_misses",
            "Inputs the result cache did not hold, sent to the batcher.",
            ["model"],
            registry=r,
        )
        self.cache_bytes = Gauge(
            "encoder_cache_bytes",
            "Bytes the result cache holds (keys, answers and their containers), all models.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_info = Gauge(
            "encoder_model_info",
            "Loaded models (value 1).",
            ["model", "task", "backend", "precision"],
            registry=r,
            multiprocess_mode="livemax",
        )

    def exposition(self) -> bytes:
        """Every sample in Prometheus' text format: this process's, or all processes'."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=str(self.multiprocess_dir))
        ServerProcessCollector(self._server_pid, merged)
        PlatformCollector(registry=merged)  # python_info: the same in every process
        with _files_locked(self.multiprocess_dir, fcntl.LOCK_SH):  # not while one is folded
            return generate_latest(merged)


# The kinds of metric files whose samples add up across processes: a dead process's are
# added into one archive file per kind, so totals never go back and files do not pile up.
# (The live* gauges of a dead process are simply removed: they describe live processes.)
ADDITIVE_KINDS = ("counter", "histogram", "summary")


@contextlib.contextmanager
def _files_locked(directory: Path, operation: int) -> Iterator[None]:
    """An flock on `directory`/.lock: scrapes share it, folding a dead process's files
    takes it alone, so a scrape never counts a dead process twice, nor misses it, nor
    trips on its file being removed (prometheus_client raises on a counter file gone)."""
    with open(directory / ".lock", "a+b") as lock:
        fcntl.flock(lock, operation)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fold_dead_process(directory: Path, pid: int) -> None:
    """After process `pid` died: drop its live gauges, and add its counters and histograms
    into the `<kind>_archive.db` files, removing its own files (prometheus_client's
    multiprocess mode keeps one file per kind per process that ever ran; merged on every
    scrape, they pile up with each restart). Called by the supervisor only."""
    with _files_locked(directory, fcntl.LOCK_EX):
        mark_process_dead(pid, str(directory))
        for kind in ADDITIVE_KINDS:
            dead = directory / f"{kind}_{pid}.db"
            if not dead.exists():
                continue
            archive = directory / f"{kind}_archive.db"
            totals: dict[str, float] = {}
            for path in (archive, dead):
                if path.exists():
                    for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
                        totals[key] = totals.get(key, 0.0) + value
            partial = directory / f"{kind}_archive.partial"  # not *.db: no scrape reads it
            partial.unlink(missing_ok=True)
            merged = MmapedDict(str(partial))
            try:
                for key, value in totals.items():
                    merged.write_value(key, value, 0.0)
            finally:
                merged.close()
            os.replace(partial, archive)
            dead.unlink()


@dataclass(frozen=True)
class TreeUsage:
    """What a process and every process below it use, summed (see `process_tree_usage`)."""

    cpu_seconds: float
    resident_bytes: float
    virtual_bytes: float
    most_open_fds: int  # the fullest descriptor table among them
    start_time: float  # the root's, seconds since the epoch
    max_fds: int  # the root's limit, which its children inherit


def process_tree_usage(root_pid: int) -> TreeUsage | None:
    """CPU and memory of `root_pid` and its descendants (psutil); None once it is gone.

    Memory pages the processes share count once per process. CPU seconds of processes the
    root started and reaped (a crashed worker, replaced) count on in its children's
    times, so the CPU total never goes back.
    """
    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
        start_time, max_fds = root.create_time(), root.rlimit(psutil.RLIMIT_NOFILE)[0]
    except psutil.Error:
        return None
    cpu = resident = virtual = 0.0
    open_fds = 0
    for process in processes:
        try:
            with process.oneshot():
                times, memory = process.cpu_times(), process.memory_info()
                fds = process.num_fds()
        except psutil.Error:  # reaped since the tree was read
            continue
        cpu += times.user + times.system
        if process is root:  # and of the processes it reaped
            cpu += times.children_user + times.children_system
        resident += memory.rss
        virtual += memory.vms
        open_fds = max(open_fds, fds)
    return TreeUsage(cpu, resident, virtual, open_fds, start_time, max_fds)


class ServerProcessCollector(Collector):
    """The `process_*` series of prometheus_client's ProcessCollector, for the server's
    whole process tree: one process, or the supervisor and every process it started (HTTP
    workers, the engine), so dashboards read CPU and memory the same either way.
    ProcessCollector reads one process only."""

    def __init__(self, root_pid: int, registry: CollectorRegistry) -> None:
        self._root_pid = root_pid
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        usage = process_tree_usage(self._root_pid)
        if usage is None:  # the supervisor is gone: this worker is stopping too
            return
        yield CounterMetricFamily(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds, by all the server's processes.",
            value=usage.cpu_seconds,
        )
        yield GaugeMetricFamily(
            "process_resident_memory_bytes",
            "Resident memory size in bytes, summed over the server's processes.",
            value=usage.resident_bytes,
        )
        yield GaugeMetricFamily(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes, summed over the server's processes.",
            value=usage.virtual_bytes,
        )
        yield GaugeMetricFamily(
            "process_start_time_seconds",
            "Start time of the server's first process since unix epoch in seconds.",
            value=usage.start_time,
        )
        yield GaugeMetricFamily(
            "process_open_fds",
            "Open file descriptors of the server's process holding the most.",
            value=usage.most_open_fds,
        )
        if usage.max_fds != psutil.RLIM_INFINITY:
            yield GaugeMetricFamily(
                "process_max_fds", "Maximum number of open file descriptors.", value=usage.max_fds
            )
