"""A tuned model shipped as a small delta (LoRA adapter + head) and rebuilt from its base.

`models/<name>/delta/` holds peft's adapter files (a student of `compress` trained in full:
its quantized change of weights, app/export/dense_delta.py) and `delta.json`: the base encoder (an
installed package or model directory), the task (classification when absent; rerank and
embedding from `finetune --task`), the labels, the training record, and the logits (an
embedding model: the pooled vectors) the tuned model gave a few fixed sentences when it
was trained. `encoder-serve rebuild` merges
the adapter into the installed base, checks those logits, and exports the model directory
with the exporter (parity-gated graph, attention graph, int8 where its gate passes).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from app.backends.torch import TorchBackend
from app.engine.contract import Pooling, Task
from app.engine.manifest import ModelManifest, kept_default, model_name_error
from app.engine.models.tokenization import TextTokenizer
from app.engine.passes.pipeline import OFFLINE_BATCH, Pipeline, open_pipeline
from app.export.dense_delta import DENSE_DELTA_FILE, apply_dense_delta
from app.export.exporter import MAX_LOGIT_DIFF, TOKENIZER_FILES, export_model, is_built
from app.export.layers import StudentShape
from app.export.messages import say
from app.export.parity import _SENTENCES
from app.export.precision import PRECISION_FILES, PrecisionError, build_precision
from app.export.source import loading, resolve_source

DELTA_DIR = "delta"
SENTENCE_TRANSFORMER_FILES = ("modules.json", "sentence_bert_config.json")
POOLING_DIR = "1_Pooling"
DELTA_FILE = "delta.json"
DELTA_FORMAT = 1
# PyTorch on another machine or library build may differ in the last bits; a changed delta
# or base moves logits by far more.
MAX_REFERENCE_DIFF = 1e-4
REFERENCE_TEXTS = _SENTENCES[:8]
TASKS = (
    "classification",
    "rerank",
    "embedding",
)  # the project's own sentences: no data set is stored
# What `rebuild` reads of delta.json, and the type each must have.
RECORD_KEYS: dict[str, type | tuple[type, ...]] = {
    "base": str,
    "source": str,
    "labels": list,
    "max_length": int,
    "reference_logits": list,
    "evaluation": dict,
}


class DeltaMismatchError(RuntimeError):
    """The rebuilt model's logits differ from those recorded at training time."""


def progress(message: str) -> None:
    say(f"[rebuild] {message}")


def classifier_from_base(
    base: Path, labels: list[str], *, attention: str | None = None
) -> torch.nn.Module:
    """The base encoder with a new sequence-classification head over `labels`."""
    kwargs: dict[str, Any] = {"attn_implementation": attention} if attention else {}
    model: torch.nn.Module = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
        **kwargs,
    )
    return model


def model_for_task(base: Path, task: str, labels: list[str]) -> torch.nn.Module:
    """The base with the head `task` trains: none for an embedding model (the encoder's
    pooled states are served), else a sequence-classification head over `labels` (a
    reranker's one output included)."""
    if task == "embedding":
        body: torch.nn.Module = AutoModel.from_pretrained(base)
        return body
    return classifier_from_base(base, labels)


def record_task(record: dict[str, Any]) -> str:
    """The task a delta was trained for; deltas from before `finetune --task` classify."""
    return str(record.get("task", "classification"))


def merged_from_delta(delta: Path, record: dict[str, Any]) -> torch.nn.Module:
    """The installed base with the delta's adapter merged into its weights (plain
    transformers); a student trained in full: its start with the stored changes added."""
    from peft import PeftModel

    if (delta / DENSE_DELTA_FILE).is_file():
        return apply_dense_delta(start_of_delta(delta, record), delta / DENSE_DELTA_FILE)

    tuned = PeftModel.from_pretrained(start_of_delta(delta, record), delta)
    merged: torch.nn.Module = tuned.merge_and_unload()
    return merged.eval()


def start_of_delta(delta: Path, record: dict[str, Any]) -> torch.nn.Module:
    """What a delta's adapter applies to: its base with a new head or, for a student of
    `compress` (its record's `student`), its teacher rebuilt from the teacher's own delta
    beside it with only the layers kept."""
    student = record.get("student")
    if student is None:
        return model_for_task(resolve_source(record["base"]), record_task(record), record["labels"])
    teacher, keep = student.get("teacher"), student.get("keep_layers")
    neurons = student.get("feed_forward_neurons")
    if not isinstance(teacher, str) or model_name_error(teacher) is not None:
        raise ValueError(f"{delta / DELTA_FILE}: student.teacher must name a model beside it")
    if not _numbers(keep):
        raise ValueError(f"{delta / DELTA_FILE}: student.keep_layers must list layer numbers")
    if neurons is not None and not (isinstance(neurons, list) and all(map(_numbers, neurons))):
        raise ValueError(
            f"{delta / DELTA_FILE}: student.feed_forward_neurons must list each kept layer's "
            "neuron numbers"
        )
    teacher_delta = delta.parent.parent / teacher / DELTA_DIR
    teacher_model = merged_from_delta(teacher_delta, read_record(teacher_delta))
    return StudentShape(keep, neurons).cut(teacher_model)


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(type(item) is int for item in value)


def reference_logits(
    model: torch.nn.Module, tokenizer: Path, max_length: int, pooling: Pooling = "cls"
) -> np.ndarray:
    """The model's logits (an embedding model: its vectors, pooled by `pooling`, not
    normalized) for REFERENCE_TEXTS, through the engine's pipeline on PyTorch."""
    pipeline = Pipeline(
        TextTokenizer(tokenizer, max_length), TorchBackend(model), pooling, OFFLINE_BATCH
    )
    return pipeline.embed(REFERENCE_TEXTS, normalized=False)


def read_record(delta: Path) -> dict[str, Any]:
    path = delta / DELTA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: no delta to rebuild from")
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a JSON object")
    if record.get("format") != DELTA_FORMAT:
        raise ValueError(f"{path}: unknown delta format {record.get('format')!r}")
    wrong = [key for key, kind in RECORD_KEYS.items() if not isinstance(record.get(key), kind)]
    if wrong:
        raise ValueError(f"{path}: missing or malformed {', '.join(wrong)}")
    return record


def write_record(delta: Path, record: dict[str, Any]) -> None:
    (delta / DELTA_FILE).write_text(json.dumps(record, indent=2) + "\n")


def save_hf_directory(model: torch.nn.Module, base: Path, target: Path) -> Path:
    """A plain transformers directory (weights + the base's tokenizer) for the exporter.
    The base's sentence-transformers files come along: they say an embedding model's
    pooling, which the exporter reads."""
    model.save_pretrained(target)  # type: ignore[operator]
    for name in (*TOKENIZER_FILES, "vocab.txt", *SENTENCE_TRANSFORMER_FILES):
        if (base / name).is_file():
            shutil.copy2(base / name, target / name)
    if (base / POOLING_DIR).is_dir():
        shutil.copytree(base / POOLING_DIR, target / POOLING_DIR)
    if not (target / "tokenizer.json").is_file():
        AutoTokenizer.from_pretrained(base).backend_tokenizer.save(str(target / "tokenizer.json"))
    return target


def check_logits(found: np.ndarray, recorded: np.ndarray, limit: float, what: str) -> float:
    expected = np.asarray(recorded, dtype=np.float32)
    if found.shape != expected.shape:  # before subtracting: shapes may broadcast silently
        raise DeltaMismatchError(
            f"{what}: logits of shape {found.shape} where {expected.shape} were recorded at "
            "training time (another label count?). The model was not written."
        )
    difference = float(np.abs(found - expected).max())
    if difference > limit:
        raise DeltaMismatchError(
            f"{what}: logits on the {len(REFERENCE_TEXTS)} reference sentences differ from "
            f"those recorded at training time by {difference:.2e} (limit {limit:.0e}); the "
            "delta, the base package or the libraries changed. The model was not written."
        )
    return difference


def export_classifier(
    merged: torch.nn.Module,
    base: Path,
    name: str,
    work: Path,
    *,
    source: str,
    max_length: int,
    recorded: np.ndarray | None,
    task: Task = "classification",
) -> ModelManifest:
    """Export `merged` as `work/name` (fp32, attention, int8 where it passes its gate),
    its fp32 graph's logits on the reference sentences checked against `recorded` (when
    given): the end-to-end check of what will be served, beside the exporter's parity.
    `task`: classification, rerank (one output) or embedding (pooled, unnormalized
    vectors are what is compared)."""
    with tempfile.TemporaryDirectory(prefix=".hf-", dir=work) as scratch:
        hf_dir = save_hf_directory(merged, base, Path(scratch) / name)
        manifest = export_model(str(hf_dir), name, work, task=task, max_length=max_length)
    directory = work / name
    manifest.source = source
    if recorded is not None:
        pipeline = open_pipeline(
            directory, manifest, "fp32", threads=torch.get_num_threads(), device="cpu"
        )
        graph_logits = pipeline.embed(REFERENCE_TEXTS, normalized=False)
        check_logits(graph_logits, recorded, MAX_LOGIT_DIFF, "the rebuilt ONNX graph")
    tokenizer = TextTokenizer(directory / manifest.tokenizer, manifest.max_length)
    try:
        manifest.parity["int8"] = build_precision(
            "int8", directory, directory / manifest.files["fp32"], tokenizer, manifest.pooling
        )
        manifest.files["int8"] = PRECISION_FILES["int8"]
    except PrecisionError as error:  # served in fp32 only; ENCODER_PRECISION=int8 names it
        manifest.parity["int8"] = {"skipped": str(error)}
    manifest.write(directory)
    return manifest


def replace_directory(built: Path, target: Path) -> None:
    """Move a finished model directory into place (the old one goes only at the last step)."""
    if target.exists():
        shutil.rmtree(target)
    built.rename(target)


def rebuild(name: str, models_dir: Path, *, skip_existing: bool = False) -> ModelManifest | None:
    """Rebuild `models_dir/name` from its committed delta; None when skipped as built."""
    if (invalid := model_name_error(name)) is not None:
        raise ValueError(invalid)
    delta = models_dir / name / DELTA_DIR
    record = read_record(delta)
    if skip_existing and is_built(models_dir, name, record.get("precisions", ["fp32"])):
        return None
    student = record.get("student")
    start = record["base"]
    if isinstance(student, dict):  # a student of `compress` starts from its teacher, cut
        start = f"{student.get('teacher')} (cut to the student's layers)"
    progress(f"{name}: merging {delta} into {start}")
    with loading(delta):  # a delta.json without a base or labels, adapter files unreadable
        merged = merged_from_delta(delta, record)
    base = resolve_source(record["base"])
    task = record_task(record)
    if task not in TASKS:
        raise ValueError(f"{delta / DELTA_FILE}: unknown task {task!r}")
    pooling = record.get("pooling", "cls")
    found = reference_logits(merged, base / "tokenizer.json", record["max_length"], pooling)
    difference = check_logits(found, record["reference_logits"], MAX_REFERENCE_DIFF, "PyTorch")
    progress(f"{name}: reference logits match the recorded ones (max abs diff {difference:.1e})")
    with tempfile.TemporaryDirectory(prefix=f".{name}-rebuild-", dir=models_dir) as scratch:
        work = Path(scratch)
        manifest = export_classifier(
            merged,
            base,
            name,
            work,
            source=record["source"],
            max_length=record["max_length"],
            recorded=np.asarray(record["reference_logits"], dtype=np.float32),
            task=task,  # type: ignore[arg-type]  # checked against TASKS above
        )
        manifest.evaluation = record["evaluation"]
        manifest.default = kept_default(models_dir / name)
        manifest.write(work / name)
        shutil.copytree(delta, work / name / DELTA_DIR)
        replace_directory(work / name, models_dir / name)
    return manifest


def delta_models(models_dir: Path) -> list[str]:
    """Models of the repository that are shipped as a delta."""
    records = models_dir.glob(f"*/{DELTA_DIR}/{DELTA_FILE}")
    return sorted(path.parent.parent.name for path in records)
