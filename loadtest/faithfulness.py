"""Faithfulness of word attributions on SST-2 dev: ERASER comprehensiveness and sufficiency.

    python -m loadtest.faithfulness [--data FILE] [--every 4] [--samples 128] [--out DIR]

`--data` is a tab-separated file with a header and a `content` column, as SST-2's GLUE
split (`label`, `content`); by default the shared SST-2 dev.tsv, ../shared/data/sst2/.
For each sentence of a fixed subset of it (every `--every`-th row, in file order),
the default `sentiment` model's predicted label is the target; five methods rank the
words: `occlusion` and `shap` (POST /explain's code, in-process), attention `mean` (the
last layer's heads averaged, the [CLS] row, summed over each word's tokens), attention
`rollout` (its [CLS] row) and `random` (a seeded shuffle). For k in 1, 5, 10, 20 and 50 %
of the words (at least one), with p the target probability:

- comprehensiveness = p(text) - p(text without the top-k words)   (higher: more faithful)
- sufficiency       = p(text) - p(only the top-k words)           (lower: more faithful)

each averaged over k (ERASER's AOPC form, DeYoung et al. 2020) and over sentences. Texts
are rebuilt from the kept words joined by spaces and scored by the engine's /classify
path. Runs in this process on the engine itself (no HTTP), with the server's settings.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.config import Settings
from app.engine.contract import Aggregate, ClassifyOptions, Engine
from app.engine.models.explain import ExplainOptions, Word, words_of
from app.engine.wiring import load_engine

DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2" / "dev.tsv"
RESULTS = Path(__file__).resolve().parent / "results"
BINS = (0.01, 0.05, 0.10, 0.20, 0.50)
METHODS = ("occlusion", "shap", "attention mean", "attention rollout", "random")
MODEL = "sentiment"
CONCURRENT = 8  # sentences in flight, so the batcher has company to batch


@dataclass
class Totals:
    comprehensiveness: dict[str, list[float]] = field(
        default_factory=lambda: {method: [] for method in METHODS}
    )
    sufficiency: dict[str, list[float]] = field(
        default_factory=lambda: {method: [] for method in METHODS}
    )


def sentences(data: Path, every: int) -> list[str]:
    """Every `every`-th text of the `content` column of `data` (SystemExit saying what is
    wrong when the file is missing or has no such column)."""
    if not data.is_file():
        raise SystemExit(f"no data file at {data}: give SST-2's dev.tsv (or another) with --data")
    with data.open(newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if "content" not in (reader.fieldnames or []):
            raise SystemExit(
                f"{data} has no `content` column (its header: {reader.fieldnames}); "
                "--data takes a tab-separated file with a header, as SST-2's dev.tsv"
            )
        rows = list(reader)
    return [row["content"] for row in rows[::every]]


async def target_scores(engine: Engine, texts: list[str], label: str) -> np.ndarray:
    result = await engine.classify(MODEL, texts, ClassifyOptions())
    return np.array(
        [next(s.score for s in scores if s.label == label) for scores in result.results]
    )


async def attention_scores(
    engine: Engine, text: str, words: list[Word], how: Aggregate
) -> np.ndarray:
    """Per word, the [CLS] row's attention to its tokens: the last layer's mean over heads,
    or the rollout through every layer."""
    result = await engine.attention(MODEL, text, layers=None, heads=None, how=how, truncate=True)
    # mean: [layer][i][j], the last layer's [CLS] row; rollout: [i][j], its [CLS] row.
    row = np.asarray(result.attentions[-1][0] if how == "mean" else result.attentions[0])
    return np.array([row[list(word.tokens)].sum() for word in words])


async def one(engine: Engine, text: str, index: int, samples: int, totals: Totals) -> None:
    tokens = (await engine.tokenize(MODEL, [text])).tokens[0]
    words = words_of(text, tokens)
    if len(words) < 2:
        return  # nothing to rank: skipped before any explanation runs
    occlusion = await engine.explain(MODEL, text, ExplainOptions(method="occlusion"))
    shap = await engine.explain(
        MODEL, text, ExplainOptions(method="shap", samples=samples, seed=index)
    )
    rng = np.random.default_rng(index)
    rankings = {
        "occlusion": np.array([w.score for w in occlusion.words]),
        "shap": np.array([w.score for w in shap.words]),
        "attention mean": await attention_scores(engine, text, words, "mean"),
        "attention rollout": await attention_scores(engine, text, words, "rollout"),
        "random": rng.permutation(len(words)).astype(float),
    }
    texts: list[str] = []
    for scores in rankings.values():
        order = np.argsort(-scores, kind="stable")
        for share in BINS:
            top = set(order[: max(1, math.ceil(share * len(words)))].tolist())
            texts.append(" ".join(w.text for i, w in enumerate(words) if i not in top) or ".")
            texts.append(" ".join(w.text for i, w in enumerate(words) if i in top))
    scored = await target_scores(engine, texts, occlusion.target)
    full = occlusion.score
    for number, method in enumerate(rankings):
        part = scored[number * 2 * len(BINS) : (number + 1) * 2 * len(BINS)]
        totals.comprehensiveness[method].append(float(np.mean(full - part[0::2])))
        totals.sufficiency[method].append(float(np.mean(full - part[1::2])))


async def evaluate(texts: list[str], samples: int) -> tuple[Totals, int, float, str]:
    settings = Settings()  # ENCODER_* as the server would read them
    engine = await asyncio.to_thread(load_engine, settings, None, warm_up=True)
    await engine.start()
    model = engine.model(MODEL, "classification")
    totals = Totals()
    started = time.monotonic()
    limit = asyncio.Semaphore(CONCURRENT)

    async def bounded(index: int, text: str) -> None:
        async with limit:
            await one(engine, text, index, samples, totals)
            done = len(totals.sufficiency["random"])
            if done % 20 == 0:
                print(f"{done}/{len(texts)} sentences, {time.monotonic() - started:.0f} s")

    await asyncio.gather(*(bounded(i, text) for i, text in enumerate(texts)))
    elapsed = time.monotonic() - started
    await engine.close()
    return totals, len(texts), elapsed, f"{model.name} ({model.source}, {model.precision})"


def table(totals: Totals) -> str:
    lines = [
        "| method | comprehensiveness ↑ | sufficiency ↓ |",
        "|---|---|---|",
    ]
    for method in METHODS:
        comp = np.mean(totals.comprehensiveness[method])
        suff = np.mean(totals.sufficiency[method])
        lines.append(f"| {method} | {comp:.3f} | {suff:.3f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=DEV,
        help=f"tab-separated file with a header and a `content` column (default: SST-2 dev, {DEV})",
    )
    parser.add_argument("--every", type=int, default=4, help="every N-th dev sentence")
    parser.add_argument("--samples", type=int, default=128, help="shap samples per sentence")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    texts = sentences(args.data, args.every)
    totals, count, elapsed, model = asyncio.run(evaluate(texts, args.samples))
    data, title = (
        ("", "SST-2 dev") if args.data == DEV else (f" --data {args.data}", args.data.name)
    )
    report = (
        f"# Faithfulness on {title}\n\n`python -m loadtest.faithfulness{data} "
        f"--every {args.every} --samples {args.samples}`: {count} sentences (every "
        f"{args.every}-th row of {args.data.name}, "
        f"{len(totals.sufficiency['random'])} with "
        f"two words or more), model {model}, {elapsed:.0f} s.\n\n"
        "Averaged over k = 1, 5, 10, 20, 50 % of the words (ERASER AOPC).\n\n"
        f"{table(totals)}\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faithfulness.md").write_text(report)
    (args.out / "faithfulness.json").write_text(
        json.dumps(
            {
                "data": str(args.data),
                "every": args.every,
                "samples": args.samples,
                "sentences": count,
                "model": model,
                "seconds": elapsed,
                "comprehensiveness": {
                    m: float(np.mean(v)) for m, v in totals.comprehensiveness.items()
                },
                "sufficiency": {m: float(np.mean(v)) for m, v in totals.sufficiency.items()},
            },
            indent=2,
        )
    )
    print(report)


if __name__ == "__main__":
    main()
