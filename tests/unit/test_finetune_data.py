"""`finetune` input: CSV/TSV/JSON Lines reading, bad input (exit 2, nothing written), the split,
the recorded scores and the progress display."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from app.cli import build_parser
from app.export.evaluation import classification_scores
from app.export.finetune import DataFormat, TrainingProgress, prepare_data
from app.export.labelled_data import read_labelled

LABELS = ["negative", "positive"]
TOPICS = ["World", "Sports", "Business", "Sci/Tech"]


def test_reads_json_lines_with_names_and_indices(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{"text": "good", "label": "positive"}, {"text": "bad", "label": 0}, {}]
    path.write_text("\n".join(json.dumps(row) for row in rows[:2]) + "\n\n", encoding="utf-8")
    data = read_labelled(path, LABELS)
    assert data.texts == ["good", "bad"] and data.labels.tolist() == [1, 0]


def test_joins_named_text_columns_and_counts_labels_from_one(tmp_path: Path) -> None:
    path = tmp_path / "news.csv"
    path.write_text(
        'label,title,description\n2,Cup final,"Late goal, big win"\n4,New chip,Faster\n',
        encoding="utf-8",
    )
    data = DataFormat(["title", "description"], "label", 1).read(path, TOPICS)
    assert data.texts == ["Cup final Late goal, big win", "New chip Faster"]
    assert data.labels.tolist() == [1, 3]


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (None, [], "no such file"),
        ("", [], "empty file"),
        ("text,label\n", [], "no labelled rows"),
        ("review,label\nok,positive\n", [], "no column named sentence or content or text"),
        ("text,stars\nok,positive\n", [], "no column named label"),
        ("text,label\nok,positive\nmeh,neutral\n", [], "label 'neutral' is neither one of"),
        ("text,label\nok,1\nmeh,x1\n", [], "label 'x1' is neither one of"),
        ("text,label\nok,1\nmeh,2\n", [], "label '2' is neither one of"),
        ("text,label\nok,positive\nfine,positive\n", [], "no examples of label 'negative'"),
        ("text,label\nok,positive\nbad,negative\n", ["--labels", "good"], "two distinct"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    extra: list[str],
    message: str,
) -> None:
    data = tmp_path / "d.csv"
    if content is not None:
        data.write_text(content, encoding="utf-8")
    models = tmp_path / "models"
    argv = ["finetune", "--data", str(data), "--name", "x", "--labels", "negative,positive"]
    argv += ["--base", str(tmp_path / "no-model-needed"), "--models-dir", str(models), *extra]
    args = build_parser().parse_args(argv)
    assert args.handler(args) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1, error
    assert not models.exists() or not any(models.iterdir())


def test_an_unknown_base_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.csv"
    rows = "".join(f"text {i},{LABELS[i % 2]}\n" for i in range(20))
    data.write_text("text,label\n" + rows, encoding="utf-8")
    argv = ["finetune", "--data", str(data), "--name", "x", "--labels", "negative,positive"]
    argv += ["--base", "no-such-model", "--models-dir", str(tmp_path / "models")]
    args = build_parser().parse_args(argv)
    assert args.handler(args) == 2
    assert "neither a model directory nor an installed Python package" in capsys.readouterr().err


def test_validation_split_is_stratified_and_every_class_trains(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    rows = [f"{i % 4 + 1}\tnews item number {i} about things" for i in range(100)]
    path.write_text("label\ttext\n" + "\n".join(rows) + "\n", encoding="utf-8")
    prepared = prepare_data(path, TOPICS, DataFormat(first_index=1), validation_share=0.2, seed=0)
    assert np.bincount(prepared.validation.labels).tolist() == [5, 5, 5, 5]
    assert np.bincount(prepared.train.labels).tolist() == [20, 20, 20, 20]
    assert not set(prepared.validation.texts) & set(prepared.train.texts)
    again = prepare_data(path, TOPICS, DataFormat(first_index=1), validation_share=0.2, seed=0)
    assert again.validation.texts == prepared.validation.texts  # the seed fixes the split


def test_an_eval_file_replaces_the_split(tmp_path: Path) -> None:
    train, dev = tmp_path / "train.csv", tmp_path / "dev.csv"
    train.write_text("text,label\na,positive\nb,negative\nc,positive\n", encoding="utf-8")
    dev.write_text("text,label\nd,negative\n", encoding="utf-8")
    prepared = prepare_data(
        train, LABELS, DataFormat(), validation_share=0.5, seed=0, eval_data=dev
    )
    assert prepared.train.texts == ["a", "b", "c"] and prepared.validation.texts == ["d"]


def test_scores_hold_accuracy_macro_f1_per_class_and_confusion() -> None:
    labels = np.asarray([0, 0, 0, 1, 1, 2])
    predicted = np.asarray([0, 0, 1, 1, 1, 1])
    scores = classification_scores(labels, predicted, ["a", "b", "c"])
    assert scores["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    assert scores["confusion_matrix"]["counts"] == [[2, 1, 0], [0, 2, 0], [0, 1, 0]]
    assert scores["per_class"]["a"] == {"precision": 1.0, "recall": 0.6667, "f1": 0.8, "support": 3}
    assert scores["per_class"]["b"]["precision"] == 0.5
    assert scores["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert scores["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0) / 3, abs=1e-4)


def test_progress_is_plain_lines_off_a_terminal() -> None:
    stream = io.StringIO()
    show = TrainingProgress(80, 4, stream=stream)
    for step in range(1, 81):
        show.step(step, 4, 0.5)
    show.write("[eval] done")
    show.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 41 and lines[-1] == "[eval] done"
    assert lines[-2].startswith("[train] step 80/80: loss 0.5000, ")
    assert "examples/s, ETA 0.0 min" in lines[-2]
