"""The compression trade made visible: accuracy against engine throughput for each teacher
and its compressed students (`encoder-serve compress`), in fp32 and int8, in one sitting.

    python -m loadtest.compression [--models models] [--rounds 5] [--out loadtest/results]

For every student in the repository (a model whose `model.json` evaluation names its
`teacher`), the teacher and its students are scored on the same held-out texts through the
engine's pipeline, as served, and timed at batch 32 (tokenization included) in alternating
rounds, the medians kept; the ratios to the teacher's fp32 graph are what to compare
(absolute figures move ±15 % between runs on a shared machine). What each family is judged
on:

- `sentiment`: SST-2 dev (../shared/data/sst2/dev.tsv), accuracy;
- `topic`: the held-out fifth of the shared AG News file (the split of the teacher's own
  evaluation), accuracy;
- an embedding teacher (`minilm`): mean cosine of each graph's vectors to the teacher's fp32
  vectors over a fifth of the AG News file, and how often a graph ranks first the text the
  teacher's fp32 graph finds nearest (R@1 of the teacher's neighbours).

Writes `compression.md`, `compression.json` and `compression.png` under `--out`. Families
whose data is not beside the checkout are left out, and the report says so.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.config import available_cores
from app.engine.manifest import MANIFEST_FILE, ModelManifest
from app.engine.passes.pipeline import open_pipeline
from app.export.compress.data import Texts, prepare_data, read_texts
from app.export.compress.evaluation import teachers_neighbours
from app.export.compress.speed import BATCH, alternating_rates, sample_of
from app.export.compress.training import mean_cosine
from app.export.finetune import DataFormat
from app.export.layers import WIDTH_NAMES
from loadtest.machine import cpu_description, host_name
from loadtest.server import ROOT

RESULTS = Path(__file__).resolve().parent / "results"
DATA = ROOT.parent / "shared" / "data"
SST2_DEV = DATA / "sst2" / "dev.tsv"
AGNEWS = DATA / "agnews" / "train.csv"
AGNEWS_FORMAT = DataFormat(["title", "description"], "label", 1)
AGNEWS_VALIDATION, AGNEWS_SEED = 0.2, 0  # the topic teacher's own held-out fifth


@dataclass(frozen=True)
class Member:
    name: str
    directory: Path
    manifest: ModelManifest


@dataclass(frozen=True)
class Judged:
    texts: Texts
    what: str


def families(models: Path) -> dict[str, list[Member]]:
    """Teacher name -> [teacher, students...] for each teacher with a student in `models`."""
    found: dict[str, list[Member]] = {}
    for directory in sorted(path for path in models.iterdir() if path.is_dir()):
        if not (directory / MANIFEST_FILE).is_file():
            continue
        manifest = ModelManifest.read(directory)
        teacher = (manifest.evaluation or {}).get("teacher")
        if not teacher or not (models / teacher / MANIFEST_FILE).is_file():
            continue
        if teacher not in found:
            teacher_manifest = ModelManifest.read(models / teacher)
            found[teacher] = [Member(teacher, models / teacher, teacher_manifest)]
        found[teacher].append(Member(directory.name, directory, manifest))
    return found


def judged_on(teacher: Member) -> Judged | None:
    """The held-out texts a family is scored on, or None where its data is not here."""
    labels = teacher.manifest.labels
    if teacher.name == "sentiment" and SST2_DEV.is_file():
        texts = read_texts(SST2_DEV, labels, DataFormat())
        return Judged(texts, f"SST-2 dev ({len(texts.texts)} sentences), accuracy")
    if not AGNEWS.is_file() or (labels and teacher.name != "topic"):
        return None
    held = prepare_data(
        AGNEWS,
        labels,
        AGNEWS_FORMAT,
        validation_share=AGNEWS_VALIDATION,
        seed=AGNEWS_SEED,
    ).validation
    if labels:
        return Judged(held, f"AG News held-out fifth ({len(held.texts)} items), accuracy")
    return Judged(
        Texts(held.texts, None),
        f"a fifth of the AG News file ({len(held.texts)} items), mean cosine to the teacher's fp32",
    )


def measure_family(members: list[Member], judged: Judged, rounds: int) -> list[dict[str, Any]]:
    threads = available_cores()
    graphs = [
        (member, precision)
        for member in members
        for precision in ("fp32", "int8")
        if precision in member.manifest.files
    ]
    pipelines = [
        open_pipeline(member.directory, member.manifest, precision, threads=threads, device="cpu")
        for member, precision in graphs
    ]
    outputs = [
        np.asarray(pipeline.embed(judged.texts.texts, normalized=False), dtype=np.float32)
        for pipeline in pipelines
    ]
    rates = alternating_rates(pipelines, sample_of(judged.texts.texts), rounds)
    reference = outputs[0]  # the teacher's fp32 graph
    rows = []
    for (member, precision), found, rate in zip(graphs, outputs, rates, strict=True):
        row: dict[str, Any] = {"model": member.name, "layers": member.manifest.num_layers}
        row["feed_forward"] = feed_forward_width(member)
        row["precision"] = precision
        if judged.texts.labels is not None:
            row["score"] = round(float(np.mean(found.argmax(axis=1) == judged.texts.labels)), 4)
        else:
            row["score"] = round(float(mean_cosine(found, reference).mean()), 4)
            row["neighbour_r_at_1"] = teachers_neighbours(found, reference)["r_at_1"]
        row |= {"sequences_per_s": round(rate, 1), "x_teacher_fp32": round(rate / rates[0], 2)}
        rows.append(row)
    return rows


def feed_forward_width(member: Member) -> int | None:
    """Neurons in each feed-forward block (`compress --intermediate-size`), from the model's
    PyTorch config; None where it has none."""
    torch_dir = member.manifest.files.get("torch")
    config = member.directory / torch_dir / "config.json" if torch_dir else None
    if config is None or not config.is_file():
        return None
    settings = json.loads(config.read_text())
    widths = [settings[name] for name in WIDTH_NAMES if isinstance(settings.get(name), int)]
    return widths[0] if widths else None


def shape(row: dict[str, Any]) -> str:
    """ "6 × 1536": layers × feed-forward neurons (layers alone where the width is unknown)."""
    return f"{row['layers']}" + ("" if row["feed_forward"] is None else f" × {row['feed_forward']}")


def write_plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib  # a `bench` extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = report["families"]
    figure, axes_list = plt.subplots(
        1, len(measured), figsize=(5.5 * len(measured), 4.2), layout="constrained", squeeze=False
    )
    for axes, family in zip(axes_list[0], measured, strict=True):
        for precision, marker in (("fp32", "o"), ("int8", "s")):
            rows = [row for row in family["rows"] if row["precision"] == precision]
            axes.plot(
                [row["sequences_per_s"] for row in rows],
                [row["score"] for row in rows],
                marker,
                label=precision,
            )
            for row in rows:
                axes.annotate(
                    f"{row['model']} ({shape(row)})",
                    (row["sequences_per_s"], row["score"]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                )
        axes.set(xlabel=f"sequences/s (batch {BATCH})", ylabel=family["judged_on"].split(", ")[-1])
        axes.set_title(f"{family['teacher']}: {family['judged_on'].split(',')[0]}", fontsize=10)
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.suptitle(f"encoder-serve compression — {report['host']}, {report['created']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def no_int8(members: list[Member]) -> dict[str, str]:
    """Why a member has no int8 graph to measure: its export's gate said so."""
    return {
        member.name: str(member.manifest.parity.get("int8", {}).get("skipped", "not built"))
        for member in members
        if "int8" not in member.manifest.files
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Compression: accuracy against engine throughput",
        "",
        f"{report['created']} on {report['host']} ({report['cpu']}, {report['threads']} threads)."
        f" `python -m loadtest.compression`: each graph scored on its family's held-out texts"
        f" through the engine's pipeline, and timed at batch {BATCH} (tokenization included)"
        f" in {report['rounds']} alternating rounds of {report['texts_per_round']} texts,"
        " medians; compare the ratios, not the absolute figures, across runs.",
        "",
    ]
    for family in report["families"]:
        neighbours = "neighbour_r_at_1" in family["rows"][0]
        lines += [
            f"## {family['teacher']} — {family['judged_on']}",
            "",
            "| model | layers × feed-forward | graph | score | "
            + ("teacher's nearest neighbour found first | " if neighbours else "")
            + "sequences/s | × teacher fp32 |",
            "|---|---|---|---|---|---|" + ("---|" if neighbours else ""),
        ]
        lines += [
            f"| {row['model']} | {shape(row)} | {row['precision']} | {row['score']:.4f} | "
            + (f"{row['neighbour_r_at_1']:.4f} | " if neighbours else "")
            + f"{row['sequences_per_s']} | {row['x_teacher_fp32']:.2f} |"
            for row in family["rows"]
        ]
        lines += [f"- {name}: no int8 graph ({why})." for name, why in family["no_int8"].items()]
        lines.append("")
    for left_out in report["left_out"]:
        lines.append(f"- {left_out}: its data is not beside the checkout; not measured.")
    lines += ["", "![accuracy against throughput](compression.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    measured, left_out = [], []
    for teacher, members in families(args.models).items():
        judged = judged_on(members[0])
        if judged is None:
            left_out.append(teacher)
            continue
        print(f"[compression] {teacher}: {', '.join(m.name for m in members)} on {judged.what}")
        rows = measure_family(members, judged, args.rounds)
        measured.append(
            {
                "teacher": teacher,
                "judged_on": judged.what,
                "rows": rows,
                "no_int8": no_int8(members),
            }
        )
    if not measured:  # a fresh clone ships no student: `make bench` goes on
        print("[compression] no compressed student with its data here: nothing measured")
        return
    report = {
        "created": time.strftime("%Y-%m-%d %H:%M"),
        "host": host_name(),
        "cpu": cpu_description().get("cpu_model", "unknown CPU"),
        "threads": available_cores(),
        "rounds": args.rounds,
        "texts_per_round": len(sample_of([])),
        "families": measured,
        "left_out": left_out,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compression.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "compression.md").write_text(markdown(report))
    write_plot(report, args.out / "compression.png")
    print(f"[compression] wrote {args.out / 'compression.md'}")


if __name__ == "__main__":
    main()
