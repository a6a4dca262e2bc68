"""Benchmark results as dataclasses, and their Markdown report and JSON twin."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class EnginePoint:
    """In-process ONNX Runtime throughput at one batch size."""

    batch_size: int
    sequences_per_s: float
    texts: int
    # "sorted": length-sorted batches, each text padded to the longest in one pass;
    # "packed": texts in arrival order sharing rows of the rewritten graph.
    batching: str = "sorted"


@dataclass
class EngineResult:
    """The engine limit: best in-process throughput, and one text alone."""

    threads: int
    points: list[EnginePoint]
    single_text_p50_ms: float
    single_text_p99_ms: float
    rounds: int = 1  # sweeps over the batch sizes; each point is the median of its rounds

    @property
    def best(self) -> EnginePoint:
        return max(self.points, key=lambda point: point.sequences_per_s)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineResult:
        points = [EnginePoint(**point) for point in data["points"]]
        return cls(**{**data, "points": points})


@dataclass
class PrecisionPoint:
    """In-process throughput of one graph precision at one batch size, measured interleaved
    with the other precisions on the same texts, so their ratio is not a between-runs one."""

    precision: str
    batch_size: int
    sequences_per_s: float


@dataclass
class TorchResult:
    """In-process sentence-transformers (PyTorch) throughput, for context."""

    threads: int
    batch_size: int
    sequences_per_s: float
    texts: int
    library: str  # e.g. "sentence-transformers 5.1 / torch 2.13.0"


@dataclass
class LoadPoint:
    """One load level against the server, and what the server's metrics said about it."""

    label: str
    mode: str  # "closed", "open" or "batch" (closed loop, many texts per request)
    clients: int | None  # concurrent clients (closed loop); None in open loop
    target_rate: float | None  # requests/s offered (open loop); None in closed loop
    texts_per_request: int
    duration_s: float
    requests: int  # sent (closed loop: completed in time; open loop: scheduled)
    answered: int  # 200 OK within the run (open loop: within its grace period)
    errors: int
    sequences_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    generator: str  # "wrk" or "asyncio"
    generator_cpu_cores: float  # generator CPU seconds / wall seconds
    server_cpu_cores: float | None = None
    mean_batch_size: float | None = None
    padding_share: float | None = None
    dispatch_lag_p99_ms: float | None = None  # open loop: how late requests left
    pool_wraps: int = 0  # times a text pool ran out and was reused with a marker

    @property
    def answered_share(self) -> float:
        return self.answered / self.requests if self.requests else 0.0


@dataclass
class BenchReport:
    """Everything one `make bench` run measured, and where and how."""

    created: str  # ISO 8601, local time
    host: str
    quick: bool
    settings: dict[str, str]  # effective ENCODER_* settings of the server
    machine: dict[str, str]  # CPU model, cores, versions, load average
    engine: EngineResult
    torch: TorchResult | None
    closed: list[LoadPoint]
    open_loop: list[LoadPoint]
    batches: list[LoadPoint]
    notes: list[str] = field(default_factory=list)
    precisions: list[PrecisionPoint] = field(default_factory=list)

    def closed_at(self, clients: int) -> LoadPoint | None:
        return next((point for point in self.closed if point.clients == clients), None)

    @property
    def efficiency(self) -> float | None:
        """Server sequences/s at 32 clients ÷ the engine limit."""
        point = self.closed_at(32)
        limit = self.engine.best.sequences_per_s
        if point is None or limit <= 0:
            return None
        return point.sequences_per_s / limit

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchReport:
        def points(key: str) -> list[LoadPoint]:
            return [LoadPoint(**point) for point in data[key]]

        torch = data.get("torch")
        return cls(
            **{
                **data,
                "engine": EngineResult.from_dict(data["engine"]),
                "torch": TorchResult(**torch) if torch else None,
                "closed": points("closed"),
                "open_loop": points("open_loop"),
                "batches": points("batches"),
                "precisions": [PrecisionPoint(**point) for point in data.get("precisions", [])],
            }
        )


# -- JSON twin ----------------------------------------------------------------


def to_json(report: BenchReport) -> str:
    return json.dumps(asdict(report), indent=2) + "\n"


def from_json(text: str) -> BenchReport:
    return BenchReport.from_dict(json.loads(text))


# -- Markdown ------------------------------------------------------------------


def _number(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def efficiency_line(report: BenchReport) -> str:
    best = report.engine.best
    point = report.closed_at(32)
    if report.efficiency is None or point is None:
        return f"Efficiency ratio: n/a (no 32-client run; engine limit {best.sequences_per_s:.1f})"
    return (
        f"Efficiency ratio: **{report.efficiency:.2f}** — server at 32 clients "
        f"{point.sequences_per_s:.1f} sequences/s ÷ engine limit {best.sequences_per_s:.1f} "
        f"sequences/s (in-process ONNX Runtime, batch {best.batch_size}, {best.batching})"
    )


def summary_table(report: BenchReport) -> list[str]:
    """The short table the README quotes: one row per server load level."""
    lines = [
        "| load | sequences/s | p50 ms | p99 ms | mean batch | padding | answered |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for point in [*report.closed, *report.open_loop, *report.batches]:
        lines.append(
            f"| {point.label} | {point.sequences_per_s:.1f} | {point.p50_ms:.1f} | "
            f"{point.p99_ms:.1f} | {_number(point.mean_batch_size)} | "
            f"{_percent(point.padding_share)} | {_percent(point.answered_share)} |"
        )
    return lines


def _engine_section(report: BenchReport) -> list[str]:
    engine = report.engine
    batchings = list(dict.fromkeys(point.batching for point in engine.points))
    by_size: dict[int, dict[str, EnginePoint]] = {}
    for point in engine.points:
        by_size.setdefault(point.batch_size, {})[point.batching] = point
    names = {"sorted": "length-sorted, padded", "packed": "packed rows"}
    table = [
        "| batch size | " + " | ".join(f"{names[b]} sequences/s" for b in batchings) + " | texts |",
        "|---:|" + "---:|" * len(batchings) + "---:|",
    ]
    for size, points in by_size.items():
        cells = [_number(points[b].sequences_per_s) if b in points else "–" for b in batchings]
        texts = max(point.texts for point in points.values())
        table.append(f"| {size} | " + " | ".join(cells) + f" | {texts} |")
    return [
        "## Engine limit (in-process ONNX Runtime)",
        "",
        f"Same graph, same tokenizer and pooling code as the server, {engine.threads} "
        "intra-op threads, fresh texts, tokenization included. Length-sorted: each batch "
        "holds neighbours in length and runs as one padded pass. Packed: the texts come in "
        "arrival order and share rows, as the server runs them (each batching on the same "
        f"texts). Each figure is the median of {engine.rounds} rounds over the whole sweep.",
        "",
        *table,
        "",
        f"Best: **{engine.best.sequences_per_s:.1f} sequences/s** at batch "
        f"{engine.best.batch_size} ({names[engine.best.batching]}). One text alone: "
        f"p50 {engine.single_text_p50_ms:.1f} ms, p99 {engine.single_text_p99_ms:.1f} ms.",
        "",
        *_torch_lines(report),
    ]


def _torch_lines(report: BenchReport) -> list[str]:
    torch = report.torch
    if torch is None:
        return []
    return [
        f"PyTorch for context ({torch.library}, {torch.threads} threads, batch "
        f"{torch.batch_size}, same texts): **{torch.sequences_per_s:.1f} sequences/s**.",
        "",
    ]


def _precision_section(report: BenchReport) -> list[str]:
    if not report.precisions:
        return []
    names = list(dict.fromkeys(point.precision for point in report.precisions))
    sizes = sorted({point.batch_size for point in report.precisions})
    rate = {(p.precision, p.batch_size): p.sequences_per_s for p in report.precisions}
    ratios = names[1:]
    header = " | ".join(f"{name} sequences/s" for name in names)
    ratio_header = "".join(f" | {name} ÷ {names[0]}" for name in ratios)
    lines = [
        "## Precisions side by side (engine)",
        "",
        "Each graph precision of the model, in one process, batch sizes interleaved and the "
        "same fresh texts for each, so the ratio does not carry the drift between runs; "
        "packed rows as the server runs them (length-sorted padded batches under "
        "`ENCODER_PACKING=false`).",
        "",
        f"| batch size | {header}{ratio_header} |",
        "|---:" * (1 + len(names) + len(ratios)) + "|",
    ]
    for size in sizes:
        cells = " | ".join(f"{rate[(name, size)]:.1f}" for name in names)
        ratio_cells = "".join(
            f" | {rate[(name, size)] / rate[(names[0], size)]:.2f}×" for name in ratios
        )
        lines.append(f"| {size} | {cells}{ratio_cells} |")
    best = {name: max(rate[(name, size)] for size in sizes) for name in names}
    lines += [
        "",
        "Best against best: "
        + ", ".join(f"{name} {best[name] / best[names[0]]:.2f}× {names[0]}" for name in ratios)
        + ".",
        "",
    ]
    return lines


def _closed_section(report: BenchReport) -> list[str]:
    lines = [
        "## Server, closed loop (one text per `POST /encode`)",
        "",
        "| clients | sequences/s | p50 ms | p90 ms | p99 ms | mean batch | padding | errors "
        "| server CPU (cores) | generator CPU (cores) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for point in [*report.closed, *report.batches]:
        clients = f"{point.clients}" + (
            f" × {point.texts_per_request} texts" if point.texts_per_request > 1 else ""
        )
        lines.append(
            f"| {clients} | {point.sequences_per_s:.1f} | {point.p50_ms:.1f} | "
            f"{point.p90_ms:.1f} | {point.p99_ms:.1f} | {_number(point.mean_batch_size)} | "
            f"{_percent(point.padding_share)} | {point.errors} | "
            f"{_number(point.server_cpu_cores, 2)} | {point.generator_cpu_cores:.2f} "
            f"({point.generator}) |"
        )
    return [*lines, ""]


def _open_section(report: BenchReport) -> list[str]:
    lines = [
        "## Server, open loop (fixed arrival rate, one text per request)",
        "",
        "Latency counts from each request's scheduled send time, so a late server cannot "
        "hide its queue (no coordinated omission).",
        "",
        "| offered | sequences/s | answered | p50 ms | p99 ms | mean batch | padding "
        "| dispatch lag p99 ms | server CPU | generator CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for point in report.open_loop:
        lines.append(
            f"| {point.label} ({_number(point.target_rate)}/s) | {point.sequences_per_s:.1f} | "
            f"{_percent(point.answered_share)} | {point.p50_ms:.1f} | {point.p99_ms:.1f} | "
            f"{_number(point.mean_batch_size)} | {_percent(point.padding_share)} | "
            f"{_number(point.dispatch_lag_p99_ms)} | {_number(point.server_cpu_cores, 2)} | "
            f"{point.generator_cpu_cores:.2f} ({point.generator}) |"
        )
    return [*lines, ""]


def name_value_section(title: str, values: dict[str, str]) -> list[str]:
    rows = [f"| `{key}` | {value} |" for key, value in sorted(values.items())]
    return [f"## {title}", "", "| name | value |", "|---|---|", *rows, ""]


def to_markdown(report: BenchReport, plot_name: str | None = None) -> str:
    kind = "quick smoke run" if report.quick else "full run"
    lines = [
        efficiency_line(report),
        "",
        f"# encoder-serve benchmark — {report.host}, {report.created} ({kind})",
        "",
        *summary_table(report),
        "",
    ]
    if plot_name:
        lines += [f"![throughput and latency against concurrency]({plot_name})", ""]
    lines += _engine_section(report) + _precision_section(report)
    lines += _closed_section(report) + _open_section(report)
    if report.notes:
        lines += ["## Notes", "", *(f"- {note}" for note in report.notes), ""]
    lines += name_value_section("Server settings", report.settings)
    lines += name_value_section("Machine", report.machine)
    return "\n".join(lines)


def write_report(report: BenchReport, directory: Path, stem: str, plot_name: str | None) -> Path:
    """Write `<stem>.md` and its JSON twin `<stem>.json`; returns the Markdown path."""
    directory.mkdir(parents=True, exist_ok=True)
    markdown = directory / f"{stem}.md"
    markdown.write_text(to_markdown(report, plot_name), encoding="utf-8")
    (directory / f"{stem}.json").write_text(to_json(report), encoding="utf-8")
    return markdown
