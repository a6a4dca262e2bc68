"""The report's PNG: server throughput and p50/p99 latency against concurrent clients."""

from __future__ import annotations

from pathlib import Path

from loadtest.report import BenchReport


def write_plot(report: BenchReport, path: Path) -> Path:
    # Imported here: matplotlib is a `bench` extra, and the report code must not need it.
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    points = sorted(report.closed, key=lambda point: point.clients or 0)
    clients = [point.clients or 0 for point in points]
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")

    throughput.plot(clients, [p.sequences_per_s for p in points], "o-", label="server /encode")
    limit = report.engine.best
    throughput.axhline(
        limit.sequences_per_s, color="gray", linestyle="--",
        label=f"engine limit (batch {limit.batch_size})",
    )  # fmt: skip
    if report.torch is not None:
        throughput.axhline(
            report.torch.sequences_per_s, color="tab:red", linestyle=":", label="PyTorch in-process"
        )
    throughput.set(xscale="log", xlabel="concurrent clients", ylabel="sequences/s", ylim=(0, None))
    throughput.set_title("Throughput (closed loop)")

    latency.plot(clients, [p.p50_ms for p in points], "o-", label="p50")
    latency.plot(clients, [p.p99_ms for p in points], "s--", label="p99")
    latency.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="latency (ms)")
    latency.set_title("Latency (closed loop)")

    for axes in (throughput, latency):
        axes.set_xticks(clients, [str(count) for count in clients])
        axes.xaxis.set_minor_locator(NullLocator())  # only the measured client counts
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
    figure.suptitle(f"encoder-serve — {report.host}, {report.created}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
