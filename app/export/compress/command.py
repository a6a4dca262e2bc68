"""`compress` itself: teacher, data, teacher outputs, student, distillation, saving, export
and evaluation, in that order.

Everything is written under a scratch directory beside the target and renamed into place at
the end, so an error or Ctrl-C leaves no half-written model. Every message goes to one
stream: `stream`, else stderr (app/export/messages.py).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from app.engine.manifest import ModelManifest, kept_default, model_name_error
from app.engine.models.tokenization import TextTokenizer
from app.export.compress.config import CompressConfig
from app.export.compress.data import CompressData, prepare_data
from app.export.compress.evaluation import evaluation_record
from app.export.compress.teacher import Teacher, resolve_teacher, student_start, teacher_outputs
from app.export.compress.training import Targets, distil
from app.export.delta import (
    DELTA_DIR,
    DELTA_FORMAT,
    MAX_REFERENCE_DIFF,
    REFERENCE_TEXTS,
    check_logits,
    export_classifier,
    merged_from_delta,
    read_record,
    reference_logits,
    replace_directory,
    save_hf_directory,
)
from app.export.dense_delta import (
    DENSE_DELTA_FILE,
    save_dense_delta,
    starting_point,
    train_as_stored,
)
from app.export.exporter import export_model
from app.export.finetune import FinetuneConfig, model_logits
from app.export.finetune.base import lora_model
from app.export.finetune.config import DataFormat
from app.export.finetune.saving import SavedDelta, save_adapter, write_delta
from app.export.finetune.training import set_seed
from app.export.layers import StudentShape
from app.export.messages import messages_to, say
from app.export.precision import PRECISION_FILES, PrecisionError, build_precision


@dataclass(frozen=True)
class Job:
    """One `compress` call's arguments."""

    teacher: str
    data: Path
    name: str
    models_dir: Path
    config: CompressConfig
    data_format: DataFormat
    eval_data: Path | None
    test_data: Path | None
    command: str


def compress(
    *,
    teacher: str,
    data: Path,
    name: str,
    models_dir: Path,
    config: CompressConfig,
    data_format: DataFormat | None = None,
    eval_data: Path | None = None,
    test_data: Path | None = None,
    command: str = "",
    stream: Any = None,
) -> ModelManifest:
    """Distil a student of `teacher` on `data` and write model `name` into `models_dir`
    (replacing it at the end). Bad input (files, columns, layers, an unusable teacher) raises
    `ValueError` / `OSError` before any training."""
    if (invalid := model_name_error(name)) is not None:
        raise ValueError(invalid)
    job = Job(
        teacher,
        data,
        name,
        models_dir,
        config,
        data_format or DataFormat(),
        eval_data,
        test_data,
        command,
    )
    with messages_to(stream):
        return _compress(job)


def _compress(job: Job) -> ModelManifest:
    config = job.config
    teacher = resolve_teacher(job.teacher, job.models_dir)
    if teacher.name == job.name and teacher.directory.parent.resolve() == job.models_dir.resolve():
        raise ValueError(f"--name {job.name}: the student would replace its own teacher")
    labels = teacher.manifest.labels if teacher.manifest.task == "classification" else []
    embedding = not labels
    if embedding and teacher.manifest.pooling != "mean":
        raise ValueError(
            f"--from {job.teacher}: embedding students are mean-pooled; this teacher pools "
            f"by {teacher.manifest.pooling}"
        )
    max_length = min(config.max_length or teacher.manifest.max_length, teacher.manifest.max_length)
    data = prepare_data(
        job.data,
        labels,
        job.data_format,
        validation_share=config.validation,
        seed=config.seed,
        eval_data=job.eval_data,
        test_data=job.test_data,
    ).clipped(max_length)
    set_seed(config.seed)
    # bad --keep-layers or --intermediate-size: here, before any training
    student, shape = student_start(teacher, config.keep_layers, config.intermediate_size)
    data = _within_budget(data, config)
    say(
        f"[data] {len(data.train.texts)} training rows "
        f"({'unlabelled' if data.train.labels is None else 'labelled'}), "
        f"{len(data.validation.texts)} validation rows, {data.dropped} dropped"
    )
    say(f"[teacher] {teacher.name}: outputs of its fp32 graph for every text (once)")
    targets = Targets(
        teacher_outputs(teacher, data.train.texts),
        teacher_outputs(teacher, data.validation.texts),
    )
    tokenizer = AutoTokenizer.from_pretrained(teacher.directory)
    method = "full" if embedding else config.method
    ships = not embedding and _delta_beside(teacher, job.models_dir)
    start = None
    if method == "full":
        # The vocabulary's vectors stay the teacher's: two thirds of a 3-layer MiniLM's
        # weights, and what lets a student trained in full ship as a small delta.
        student.get_input_embeddings().weight.requires_grad_(False)  # type: ignore[operator]
        if ships:  # trained as its delta will store it: what is validated is what ships
            start = starting_point(student)
            train_as_stored(student, start)
    elif method == "lora":
        student = lora_model(
            student,
            FinetuneConfig(
                lora_rank=config.lora_rank,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
            ),
            train_norms=True,
        )
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    say(
        f"[model] student: layers {_listed(shape.keep_layers)} of {teacher.manifest.num_layers}"
        f"{_narrower(shape)}, "
        f"{method}: {trainable:,} trainable parameters, lr {config.learning_rate}"
    )
    job.models_dir.mkdir(parents=True, exist_ok=True)
    prefix = f".{job.name}-compress-"
    with tempfile.TemporaryDirectory(prefix=prefix, dir=job.models_dir) as scratch:
        work = Path(scratch)
        work.chmod(0o755)
        record = distil(
            student,
            tokenizer,
            data.train,
            data.validation,
            targets,
            config,
            max_length,
            embedding=embedding,
        )
        say(
            f"[train] {record.steps} steps, {record.examples} examples in {record.seconds:.0f} s; "
            f"best validation {record.best_accuracy:.4f} at step {record.best_step}"
        )
        saved = None
        if embedding:
            manifest = _export_embedding(student, teacher, job.name, work, max_length)
        else:
            if ships:
                saved = _save_student_delta(
                    student, tokenizer, work, teacher, shape, max_length, start
                )
                merged, recorded = saved.merged, saved.recorded
                source = saved.record["source"]
            else:
                merged = student.merge_and_unload() if method == "lora" else student  # type: ignore[operator]
                recorded, source = None, f"{teacher.manifest.source} (student of {teacher.name})"
                say(
                    f"[export] no delta: {teacher.name} is not a delta-shipped model of "
                    f"{job.models_dir}; the student's exported files are the model"
                )
            say("[export] exporting the student (parity-gated); int8 where its gate passes")
            manifest = export_classifier(
                merged,
                teacher.directory,
                job.name,
                work,
                source=source,
                max_length=max_length,
                recorded=recorded,
            )
        directory = work / job.name
        evaluation = evaluation_record(
            directory,
            manifest,
            teacher,
            targets.validation,
            data,
            config,
            shape.keep_layers,
            record,
            job.command,
            job.eval_data,
        )
        manifest.evaluation = evaluation
        manifest.default = kept_default(job.models_dir / job.name)
        manifest.write(directory)
        if saved is not None:
            write_delta(saved, work, directory, manifest, evaluation)
        replace_directory(directory, job.models_dir / job.name)
    return manifest


def _within_budget(data: CompressData, config: CompressConfig) -> CompressData:
    """Only the training rows `--max-steps` updates can reach (a random sample, by the seed):
    the teacher's outputs are computed for those alone (SST-2's 67,349 rows for a budget
    of 48,000 examples, say)."""
    reach = config.max_steps * config.batch_size
    if not config.max_steps or reach >= len(data.train.texts):
        return data
    generator = torch.Generator().manual_seed(config.seed)
    rows = torch.randperm(len(data.train.texts), generator=generator)[:reach].sort().values
    say(f"[data] --max-steps {config.max_steps} reaches {reach} of the training rows: sampled")
    return CompressData(data.train.subset(rows.numpy()), data.validation, data.test, data.dropped)


def _delta_beside(teacher: Teacher, models_dir: Path) -> bool:
    """A student's delta names its teacher's delta by model name: the teacher must be a
    delta-shipped model of the same repository."""
    return teacher.delta is not None and teacher.directory.parent.resolve() == models_dir.resolve()


def _save_student_delta(
    model: torch.nn.Module,
    tokenizer: Any,
    work: Path,
    teacher: Teacher,
    shape: StudentShape,
    max_length: int,
    start: dict[str, torch.Tensor] | None,
) -> SavedDelta:
    """The student's delta written to `work`/DELTA_DIR and applied to the teacher's kept
    layers, as `rebuild` will do it; the result must match the trained student. A LoRA
    student's delta is its adapter; a full student's, its change of weights from `start`
    in the stored form it trained in (app/export/dense_delta.py)."""
    assert teacher.delta is not None
    teacher_record = read_record(teacher.delta)
    delta_dir = work / DELTA_DIR
    if start is None:
        save_adapter(model, delta_dir, teacher_record["base"])
        what = f"LoRA delta ({DELTA_DIR}/)"
    else:
        save_dense_delta(model, start, delta_dir)
        what = f"5-level delta of its weights ({DELTA_DIR}/{DENSE_DELTA_FILE})"
    record: dict[str, Any] = {
        "format": DELTA_FORMAT,
        "base": teacher_record["base"],
        "source": f"{teacher_record['base']} + {teacher.name}'s delta, layers "
        f"{_listed(shape.keep_layers)}{_narrower(shape)} + {what}",
        "labels": list(teacher.manifest.labels),
        "max_length": max_length,
        "student": {"teacher": teacher.name, "keep_layers": shape.keep_layers},
    }
    if shape.neurons is not None:
        record["student"]["feed_forward_neurons"] = shape.neurons
    trained = model_logits(model, tokenizer, list(REFERENCE_TEXTS), max_length)
    merged = merged_from_delta(delta_dir, record)
    recorded = reference_logits(merged, teacher.directory / "tokenizer.json", max_length)
    check_logits(recorded, trained, MAX_REFERENCE_DIFF, "the saved delta")
    return SavedDelta(record, merged, np.asarray(recorded))


def _listed(numbers: list[int]) -> str:
    return ",".join(map(str, numbers))


def _narrower(shape: StudentShape) -> str:
    """How wide a narrowed student's feed-forward blocks are ("" when as the teacher's)."""
    return "" if shape.neurons is None else f", {len(shape.neurons[0])} feed-forward neurons"


def _export_embedding(
    model: torch.nn.Module, teacher: Teacher, name: str, work: Path, max_length: int
) -> ModelManifest:
    """An embedding student exported as its teacher was (mean pooling, parity-gated), with
    an int8 graph where its gate passes."""
    with tempfile.TemporaryDirectory(prefix=".hf-", dir=work) as scratch:
        hf_dir = save_hf_directory(model, teacher.directory, Path(scratch) / name)
        manifest = export_model(str(hf_dir), name, work, task="embedding", max_length=max_length)
    directory = work / name
    manifest.source = f"{teacher.manifest.source} (student of {teacher.name})"
    tokenizer = TextTokenizer(directory / manifest.tokenizer, manifest.max_length)
    try:
        manifest.parity["int8"] = build_precision(
            "int8", directory, directory / manifest.files["fp32"], tokenizer, manifest.pooling
        )
        manifest.files["int8"] = PRECISION_FILES["int8"]
    except PrecisionError as error:
        manifest.parity["int8"] = {"skipped": str(error)}
    manifest.write(directory)
    return manifest


__all__ = ["CompressData", "compress"]
