"""Hardening 3, the offline tools (`export`, `finetune`, `train-head`, `rebuild`): bad files and
sources exit 2 with one line and write nothing, model names are names (never paths), an
existing model is replaced only with --force, a byte-order mark is not part of a column
name, and neither a phrase-heavy file nor one very long text costs memory out of bounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import build_parser
from app.engine.manifest import ManifestError, ModelManifest
from app.export.labelled_data import read_labelled
from tests.conftest import MODELS_DIR, ROOT
from tests.tiny_models import build_tiny_bert
from tests.unit.test_train_head import NEGATIVE, POSITIVE

LABELS = ["negative", "positive"]
MB = 2**20


def tree(root: Path) -> dict[str, int]:
    """Every path under `root` with its modification time: what a tool must leave alone."""
    return {str(path.relative_to(root)): path.lstat().st_mtime_ns for path in root.rglob("*")}


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A model repository holding one model, inside a directory the tools must not touch."""
    models = tmp_path / "place" / "models"
    (models / "keep").mkdir(parents=True)
    (models / "keep" / "model.json").write_text("{}\n")
    return models


def run_tool(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code, capsys.readouterr().err


def assert_one_line(error: str, command: str, message: str) -> None:
    """One `encoder-serve COMMAND:` line, the last one (export prints progress before)."""
    assert "Traceback" not in error, error
    lines = [line for line in error.splitlines() if line.startswith("encoder-serve")]
    assert len(lines) == 1 and error.splitlines()[-1] == lines[0], error
    assert lines[0].startswith(f"encoder-serve {command}: ") and message in lines[0], error


def finetune_argv(
    data: Path, models: Path, name: str = "mood", *extra: str, base: str = ""
) -> list[str]:
    """A finetune command; its base by default a path that does not exist (the data, read
    first, is what these tests are about)."""
    argv = ["finetune", "--data", str(data), "--name", name, "--labels", ",".join(LABELS)]
    argv += ["--base", base or str(models.parent / "no-base"), *extra]
    return [*argv, "--models-dir", str(models)]


def fake_base(models: Path) -> None:
    """A base model's manifest: enough for the head method to get to reading its data."""
    (models / "base").mkdir()
    data = {"name": "base", "task": "embedding", "source": "x", "pooling": "mean"}
    data |= {"max_length": 8, "dimensions": 4, "num_layers": 1, "num_heads": 1}
    ModelManifest.model_validate(data).write(models / "base")


# Bad training files: (file name, bytes, what the one line says).
DEEP = "[" * 100_000 + "]" * 100_000
BAD_FILES = {
    "oversized-csv-field": ("d.csv", b"text,label\n" + b"a" * 200_000 + b",positive\n", "limit"),
    "open-quote-csv": ("d.csv", b'text,label\n"ok,positive\n' + b"x" * 140_000, "quote"),
    "oversized-tsv-field": ("d.tsv", b"text\tlabel\n" + b"a" * 200_000 + b"\t1\n", "limit"),
    "nested-json-line": ("d.jsonl", f'{{"text": {DEEP}, "label": 1}}\n'.encode(), "nested"),
    "nested-json-row": ("d.jsonl", (DEEP + "\n").encode(), "nested"),
    "not-utf8": ("d.csv", b"text,label\ncaf\xe9,positive\n", "not UTF-8"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
@pytest.mark.parametrize("method", ["lora", "head"])
def test_bad_training_files_exit_2_with_one_line_and_write_nothing(
    repository: Path, capsys: pytest.CaptureFixture[str], kind: str, method: str
) -> None:
    name, content, message = BAD_FILES[kind]
    data = repository.parent / name
    data.write_bytes(content)
    if method == "head":  # the head method reads the data after finding its base model
        fake_base(repository)
        argv = finetune_argv(data, repository, "mood", "--method", "head", base="base")
    else:
        argv = finetune_argv(data, repository)
    before = tree(repository.parent)
    code, error = run_tool(argv, capsys)
    assert code == 2
    assert_one_line(error, "finetune", message)
    assert tree(repository.parent) == before


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-source"))


def broken_source(tiny_source: Path, target: Path, kind: str) -> Path:
    import shutil

    shutil.copytree(tiny_source, target)
    if kind == "no-weights":
        (target / "model.safetensors").unlink()
    elif kind == "truncated-weights":
        weights = target / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif kind == "foreign-weights":
        (target / "model.safetensors").unlink()
        (target / "pytorch_model.bin").write_bytes(b"not a pickle at all")
    elif kind == "config-not-json":
        (target / "config.json").write_text('{"model_type": "bert",')
    elif kind == "config-nested":
        (target / "config.json").write_text(DEEP)
    return target


@pytest.mark.parametrize(
    "kind",
    ["no-weights", "truncated-weights", "foreign-weights", "config-not-json", "config-nested"],
)
def test_export_of_a_source_without_usable_weights_exits_2_with_one_line(
    tiny_source: Path,
    repository: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    source = broken_source(tiny_source, repository.parent / "source", kind)
    before = tree(repository.parent)
    argv = ["export", str(source), "--name", "tiny", "--models-dir", str(repository)]
    code, error = run_tool(argv, capsys)
    assert code == 2
    assert_one_line(error, "export", "")
    assert tree(repository.parent) == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (DEEP, "nested too deeply"),
        ("{not json", "not valid JSON"),
        ('{"format": 1}', "missing or malformed base"),
    ],
)
def test_rebuild_of_a_malformed_delta_exits_2_with_one_line(
    repository: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    (repository / "mood" / "delta").mkdir(parents=True)
    (repository / "mood" / "delta" / "delta.json").write_text(content)
    before = tree(repository.parent)
    code, error = run_tool(["rebuild", "mood", "--models-dir", str(repository)], capsys)
    assert code == 2
    assert_one_line(error, "rebuild", message)
    assert tree(repository.parent) == before


def test_rebuild_of_a_delta_without_its_adapter_exits_2_with_one_line(
    tiny_source: Path, repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = {"format": 1, "base": str(tiny_source), "source": "x", "labels": LABELS}
    record |= {"max_length": 8, "reference_logits": [[0.0, 0.0]], "evaluation": {}}
    (repository / "mood" / "delta").mkdir(parents=True)
    (repository / "mood" / "delta" / "delta.json").write_text(json.dumps(record))
    before = tree(repository.parent)
    code, error = run_tool(["rebuild", "mood", "--models-dir", str(repository)], capsys)
    assert code == 2
    assert_one_line(error, "rebuild", "cannot load the model")
    assert tree(repository.parent) == before


PATH_NAMES = ["", ".", "..", "../escape", "a/b", "/tmp/escape", "x\n", "x\x1b[31m", "-", "_x"]


def commands_naming(name: str, repository: Path, data: Path) -> list[list[str]]:
    models = ["--models-dir", str(repository)]
    source = str(repository / "no-source")  # never reached: the name is checked first
    head_flags = ["--labels", "a,b", "--force", *models]
    return [
        ["export", source, "--name", name, *models],
        ["export", source, "--name", name, "--skip-existing", *models],
        ["export", source, "--name", name, "--force", *models],
        finetune_argv(data, repository, name),
        finetune_argv(data, repository, name, "--force", "--method", "head"),
        ["train-head", "--base", "keep", "--data", str(data), "--name", name, *head_flags],
        ["rebuild", name, *models],
    ]


@pytest.mark.parametrize("name", PATH_NAMES, ids=repr)
def test_model_names_that_are_paths_are_refused_by_every_command(
    repository: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    data = repository.parent / "d.csv"
    data.write_text("text,label\n" + "".join(f"row {i},{LABELS[i % 2]}\n" for i in range(20)))
    before = tree(repository.parent.parent)
    for argv in commands_naming(name, repository, data):
        code, error = run_tool(argv, capsys)
        assert code == 2, argv
        assert_one_line(error, argv[0], "invalid model name")
        assert tree(repository.parent.parent) == before, argv


def test_the_served_manifest_follows_the_same_name_rule(tmp_path: Path) -> None:
    for name, valid in [("../escape", False), ("a/b", False), ("", False), ("sentiment", True)]:
        directory = tmp_path / "m"
        directory.mkdir(exist_ok=True)
        data = {"name": name, "task": "embedding", "source": "x", "pooling": "mean"}
        data |= {"max_length": 8, "dimensions": 4, "num_layers": 1, "num_heads": 1}
        (directory / "model.json").write_text(json.dumps(data))
        if valid:
            assert ModelManifest.read(directory).name == name
        else:
            with pytest.raises(ManifestError, match="invalid model name"):
                ModelManifest.read(directory)
    for manifest in MODELS_DIR.glob("*/model.json"):  # the shipped names still hold
        assert ModelManifest.read(manifest.parent).name == manifest.parent.name


@pytest.mark.parametrize("command", ["finetune", "train-head"])
def test_an_existing_model_is_replaced_only_with_force(
    repository: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    data = repository.parent / "d.csv"
    data.write_text("text,label\nonly positive,positive\n")  # bad data: found only with --force
    if command == "finetune":
        argv = finetune_argv(data, repository, "keep")
    else:
        argv = ["train-head", "--base", "keep", "--data", str(data), "--name", "keep"]
        argv += ["--labels", ",".join(LABELS), "--models-dir", str(repository)]
    before = tree(repository.parent)
    code, error = run_tool(argv, capsys)
    assert code == 2
    assert_one_line(error, command, "already exists; pass --force to replace it")
    assert tree(repository.parent) == before
    code, error = run_tool([*argv, "--force"], capsys)  # past the check, to the bad data
    assert code == 2 and "already exists" not in error
    assert tree(repository.parent) == before


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("d.csv", "text,label\ngood,positive\nbad,negative\n"),
        ("d.tsv", "label\tsentence\n1\tgood\n0\tbad\n"),
        ("d.jsonl", '{"text": "good", "label": "positive"}\n{"text": "bad", "label": 0}\n'),
    ],
)
def test_a_byte_order_mark_before_the_header_is_ignored(
    tmp_path: Path, name: str, content: str
) -> None:
    path = tmp_path / name
    path.write_text("\ufeff" + content, encoding="utf-8")
    data = read_labelled(path, LABELS)
    assert data.texts == ["good", "bad"] and data.labels.tolist() == [1, 0]


# Runs a command and prints its exit status, stderr and peak RSS (the child's alone: a fresh
# measuring process per command, so no other child's peak is counted).
MEASURE = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"code": done.returncode, "stderr": done.stderr, "peak_mb": peak / 1024}))
"""


def peak_rss(argv: list[str]) -> tuple[int, str, float]:
    """Exit status, stderr and peak RSS in MiB of `encoder-serve ARGV` run alone."""
    command = [sys.executable, "-c", MEASURE, sys.executable, "-m", "app", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    result = json.loads(done.stdout)
    return result["code"], result["stderr"], result["peak_mb"]


def phrase_rows(size: int) -> list[str]:
    """SST-style rows: 64-word sentences, each with a nested half and a copy of itself."""
    import random

    rng = random.Random(0)
    rows: list[str] = []
    while sum(map(len, rows)) < size:
        words = [f"w{rng.randrange(10**6)}" for _ in range(64)]
        rows += [" ".join(words), " ".join(words[:32]), " ".join(words)]
    return rows


def test_a_phrase_heavy_file_costs_memory_linear_in_its_size(tmp_path: Path) -> None:
    """2 MB of nested rows: the split's index once took about 1 GB; now the same command on
    a 60-row file sets the baseline (interpreter, torch) and 2 MB may add 64 MiB."""
    costs = {}
    for label, rows in [("small", phrase_rows(20_000)[:60]), ("large", phrase_rows(2 * MB))]:
        data = tmp_path / f"{label}.csv"
        data.write_text(
            "text,label\n" + "".join(f"{r},{LABELS[i % 2]}\n" for i, r in enumerate(rows))
        )
        code, error, costs[label] = peak_rss(finetune_argv(data, tmp_path / "models"))
        assert code == 2 and "no-base" in error, error  # the split is made before the base
    assert costs["large"] - costs["small"] < 64, costs


def test_one_very_long_text_is_cut_before_it_is_tokenized(
    tiny_source: Path, tmp_path: Path
) -> None:
    """A 6 MB text among 20 once cost about 1 GB of tokens (then truncated to 128); the text
    is cut to what 128 tokens can hold first, so the run costs what a short one does."""
    costs = {}
    for label, length in [("short", 40), ("long", 6 * MB)]:
        rows = [(text, "positive") for text in POSITIVE] + [(t, "negative") for t in NEGATIVE]
        rows[0] = (("lovely film " * (length // 12 + 1))[:length], "positive")
        data = tmp_path / f"{label}.jsonl"
        data.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
        argv = finetune_argv(
            data, tmp_path / label, "mood", "--method", "full", base=str(tiny_source)
        )
        argv += ["--max-steps", "1", "--batch-size", "64", "--validation", "0.2"]
        code, error, costs[label] = peak_rss(argv)
        assert code == 0, error
    assert costs["long"] - costs["short"] < 150, costs


def test_the_head_method_cuts_texts_before_the_base_tokenizes_them() -> None:
    """The head method embeds through the engine's pipeline, which tokenizes texts whole."""
    from types import SimpleNamespace

    from app.export.labelled_data import CHARS_PER_TOKEN
    from app.export.train_head import FeatureExtractor

    seen: list[str] = []

    def embed(texts: list[str], **kwargs: object) -> list[str]:
        seen.extend(texts)
        return texts

    extractor = FeatureExtractor.__new__(FeatureExtractor)
    extractor.manifest = SimpleNamespace(max_length=16)  # type: ignore[assignment]
    extractor._pipeline = SimpleNamespace(embed=embed)  # type: ignore[assignment]
    extractor.embed(["short", "x" * 10 * MB])
    assert seen == ["short", "x" * 16 * CHARS_PER_TOKEN]
