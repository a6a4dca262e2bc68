"""The `make bench-peer` report: its figures as dataclasses, one Markdown table, JSON, a plot."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.report import LoadPoint, name_value_section

ENCODER_SERVE = "encoder-serve"
INFINITY = "infinity-emb"
SERVERS = (ENCODER_SERVE, INFINITY)
SHARED_CORES = 0.25  # other work above this during a point is called out in the notes


@dataclass
class PeerPoint:
    """One load level against one server in one round."""

    server: str  # ENCODER_SERVE or INFINITY
    round: int  # 1-based
    slot: int  # 1: this server ran first in its round, 2: second
    load: LoadPoint
    other_cpu_cores: float | None = None  # used meanwhile by neither server nor generator


@dataclass
class PeerReport:
    """Everything one `make bench-peer` run measured, and how."""

    created: str  # ISO 8601, local time
    host: str
    quick: bool
    rounds: int
    point_s: float  # each load level
    warmup_s: float  # each server start, before its load levels
    request: str  # what every request looked like, the same for both servers
    isolation: str  # how each server ran alone
    commands: dict[str, str]  # server → its command line
    environments: dict[str, str]  # server → its environment and working directory, in words
    versions: dict[str, dict[str, str]]  # server → package → version
    settings: dict[str, str]  # encoder-serve's effective ENCODER_* settings
    machine: dict[str, str]
    parity: dict[str, float]  # the same probe text through both servers
    points: list[PeerPoint]
    notes: list[str] = field(default_factory=list)

    def point(self, server: str, round_number: int, clients: int) -> PeerPoint | None:
        return next(
            (
                point
                for point in self.points
                if (point.server, point.round, point.load.clients)
                == (server, round_number, clients)
            ),
            None,
        )

    @property
    def clients(self) -> list[int]:
        return sorted({point.load.clients or 0 for point in self.points})

    def ratios(self, clients: int) -> list[tuple[int, float]]:
        """(round, encoder-serve ÷ infinity-emb sequences/s) for each round with both."""
        found = []
        for round_number in range(1, self.rounds + 1):
            ours = self.point(ENCODER_SERVE, round_number, clients)
            theirs = self.point(INFINITY, round_number, clients)
            if ours and theirs and theirs.load.sequences_per_s > 0:
                found.append(
                    (round_number, ours.load.sequences_per_s / theirs.load.sequences_per_s)
                )
        return found

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeerReport:
        points = [
            PeerPoint(**{**point, "load": LoadPoint(**point["load"])}) for point in data["points"]
        ]
        return cls(**{**data, "points": points})


def to_json(report: PeerReport) -> str:
    return json.dumps(asdict(report), indent=2) + "\n"


def from_json(text: str) -> PeerReport:
    return PeerReport.from_dict(json.loads(text))


# -- Markdown ------------------------------------------------------------------------


def headline(report: PeerReport) -> list[str]:
    """One line per client count: the ratio in each round and its median."""
    lines = []
    for clients in report.clients:
        ratios = report.ratios(clients)
        if not ratios:
            continue
        median = statistics.median(ratio for _, ratio in ratios)
        each = ", ".join(f"{ratio:.2f}×" for _, ratio in ratios)
        noun = "client" if clients == 1 else "clients"
        lines.append(
            f"- **{clients} {noun}:** encoder-serve ÷ infinity-emb = **{median:.2f}×** "
            f"(median of rounds: {each})"
        )
    return lines


def table(report: PeerReport) -> list[str]:
    """The report's one table: per round and client count, both servers and their ratio."""
    lines = [
        "| round | clients | first | encoder-serve seq/s | p50 ms | p99 ms | CPU "
        "| infinity-emb seq/s | p50 ms | p99 ms | CPU | ratio |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for round_number in range(1, report.rounds + 1):
        for clients in report.clients:
            ours = report.point(ENCODER_SERVE, round_number, clients)
            theirs = report.point(INFINITY, round_number, clients)
            if ours is None or theirs is None:
                continue
            first = ENCODER_SERVE if ours.slot == 1 else INFINITY
            ratio = dict(report.ratios(clients)).get(round_number)
            cells = [
                f"{load.sequences_per_s:.1f} | {load.p50_ms:.1f} | {load.p99_ms:.1f} | "
                + ("–" if load.server_cpu_cores is None else f"{load.server_cpu_cores:.2f}")
                for load in (ours.load, theirs.load)
            ]
            lines.append(
                f"| {round_number} | {clients} | {first} | {cells[0]} | {cells[1]} | "
                + ("– |" if ratio is None else f"**{ratio:.2f}×** |")
            )
    return lines


def _versions_table(report: PeerReport) -> list[str]:
    names = list(dict.fromkeys(name for found in report.versions.values() for name in found))
    servers = list(report.versions)
    lines = [
        "| package | " + " | ".join(servers) + " |",
        "|---|" + "---|" * len(servers),
    ]
    for name in names:
        cells = " | ".join(report.versions[server].get(name, "–") for server in servers)
        lines.append(f"| {name} | {cells} |")
    return lines


def _sharing(report: PeerReport) -> list[str]:
    """How much of the cores other work took while the points were measured."""
    others = [point.other_cpu_cores for point in report.points]
    found = [value for value in others if value is not None]
    if not found:
        return []
    lines = [
        f"Other processes on the machine used {min(found):.2f}–{max(found):.2f} cores "
        f"(median {statistics.median(found):.2f}) while the points were measured."
    ]
    shared = [
        f"round {point.round} {point.server} at {point.load.clients} ({point.other_cpu_cores:.2f})"
        for point in report.points
        if point.other_cpu_cores is not None and point.other_cpu_cores > SHARED_CORES
    ]
    if shared:
        lines.append(
            f"Points that shared the cores with other work (over {SHARED_CORES} cores taken "
            f"by others; their ratio is less telling): {', '.join(shared)}."
        )
    return lines


def _errors(report: PeerReport) -> list[str]:
    failed = [point for point in report.points if point.load.errors]
    return [
        f"{point.server}, round {point.round}, {point.load.clients} clients: "
        f"{point.load.errors} errors of {point.load.requests} requests"
        for point in failed
    ]


def to_markdown(report: PeerReport, plot_name: str | None = None) -> str:
    kind = "quick run" if report.quick else "full run"
    parity = report.parity
    lines = [
        f"# encoder-serve against infinity-emb — {report.host}, {report.created} ({kind})",
        "",
        f"Closed loop, one text per request, {report.rounds} rounds of "
        f"{report.point_s:.0f} s per load level and server. Ratio: encoder-serve ÷ "
        "infinity-emb sequences/s in the same round. CPU: the cores the server process "
        "(with any children) used while measured.",
        "",
        *headline(report),
        "",
        *table(report),
        "",
    ]
    if plot_name:
        lines += [f"![throughput, latency and ratio per round]({plot_name})", ""]
    lines += [
        "## How it was measured",
        "",
        "- **Same graph, same tokenizer:** infinity-emb loads a directory of symlinks to "
        "encoder-serve's own model files (the fused fp32 ONNX graph, `tokenizer.json`, "
        "`config.json`) with its ONNX engine (`--engine optimum`, "
        "`--onnx-disable-optimize` so it serves the graph unchanged). Only the serving "
        "stacks differ.",
        f"- **Same requests:** {report.request}. Within a round both servers get the same "
        "fresh texts (`loadtest/texts.py`), in the same order; every round has new ones.",
        f"- **Alone while measured:** {report.isolation}",
        f"- **Same answers:** one probe text through both: cosine {parity['cosine']:.7f}, "
        f"largest difference {parity['max_abs_diff']:.2e}.",
        "",
        "| server | command | environment |",
        "|---|---|---|",
        *(
            f"| {server} | `{command}` | {report.environments.get(server, '')} |"
            for server, command in report.commands.items()
        ),
        "",
    ]
    notes = [*report.notes, *_sharing(report), *_errors(report)]
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    lines += ["## Versions", "", *_versions_table(report), ""]
    lines += name_value_section("encoder-serve settings", report.settings)
    lines += name_value_section("Machine", report.machine)
    return "\n".join(lines)


def write_report(report: PeerReport, directory: Path, stem: str, plot_name: str | None) -> Path:
    """`<stem>.md` and its JSON twin `<stem>.json`; returns the Markdown path."""
    directory.mkdir(parents=True, exist_ok=True)
    markdown = directory / f"{stem}.md"
    markdown.write_text(to_markdown(report, plot_name), encoding="utf-8")
    (directory / f"{stem}.json").write_text(to_json(report), encoding="utf-8")
    return markdown


# -- plot ----------------------------------------------------------------------------


def write_plot(report: PeerReport, path: Path) -> Path:
    """Throughput, p50/p99 latency and the ratio, per round, for each client count."""
    # Imported here: matplotlib is a `bench` extra, and the report code must not need it.
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    rounds = list(range(1, report.rounds + 1))
    styles = {ENCODER_SERVE: "-", INFINITY: "--"}
    figure, (throughput, latency, ratio) = plt.subplots(
        1, 3, figsize=(15, 4.4), layout="constrained"
    )
    for index, clients in enumerate(report.clients):
        color = f"C{index}"
        for server in SERVERS:
            points = [report.point(server, number, clients) for number in rounds]
            loads = [point.load for point in points if point is not None]
            shown = [number for number, point in zip(rounds, points, strict=True) if point]
            label = f"{server}, {clients} cl."
            throughput.plot(
                shown, [load.sequences_per_s for load in loads], "o" + styles[server],
                color=color, label=label,
            )  # fmt: skip
            latency.plot(
                shown, [load.p50_ms for load in loads], "o" + styles[server],
                color=color, label=label,
            )  # fmt: skip
            latency.plot(
                shown, [load.p99_ms for load in loads], "^" + styles[server],
                color=color, alpha=0.45,
            )  # fmt: skip
        found = report.ratios(clients)
        ratio.plot(
            [number for number, _ in found], [value for _, value in found], "o-",
            color=color, label=f"{clients} client" + ("s" * (clients != 1)),
        )  # fmt: skip
    ratio.axhline(1.0, color="gray", linestyle=":", label="parity")
    throughput.set(xlabel="round", ylabel="sequences/s", ylim=(0, None))
    throughput.set_title("Throughput (solid: encoder-serve)")
    latency.set(xlabel="round", ylabel="latency (ms)", yscale="log")
    latency.set_title("Latency: p50 (o) and p99 (^, faint)")
    ratio.set(xlabel="round", ylabel="encoder-serve ÷ infinity-emb", ylim=(0, None))
    ratio.set_title("Throughput ratio")
    for axes in (throughput, latency, ratio):
        axes.set_xticks(rounds)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle(f"encoder-serve vs infinity-emb — {report.host}, {report.created}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
