"""`finetune` itself: data, base, training, saving, export and evaluation, in that order.

Everything is written under a scratch directory beside the target and renamed into place
at the end, so an error or Ctrl-C leaves no half-written model. Every message goes to one
stream: `stream`, else stderr (app/export/messages.py).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from app.engine.manifest import ModelManifest, kept_default, model_name_error
from app.export.delta import classifier_from_base, export_classifier, replace_directory
from app.export.finetune.base import lora_model, resolve_base
from app.export.finetune.config import DataFormat, FinetuneConfig
from app.export.finetune.data import prepare_data
from app.export.finetune.evaluation import evaluation_record
from app.export.finetune.saving import save_lora_delta, write_delta
from app.export.finetune.training import set_seed, train_classifier
from app.export.labelled_data import LabelledTexts
from app.export.messages import messages_to, say
from app.export.source import loading


def finetune(
    *,
    base: str,
    data: Path,
    name: str,
    labels: list[str],
    models_dir: Path,
    config: FinetuneConfig,
    data_format: DataFormat | None = None,
    eval_data: Path | None = None,
    test_data: Path | None = None,
    command: str = "",
    stream: Any = None,
) -> ModelManifest:
    """Tune `base` on `data` and write model `name` into `models_dir` (replacing it at the end).

    Bad input (files, columns, labels, an unknown base) raises before any training:
    `LabelledDataError` / `ValueError` / `FileNotFoundError`. Progress goes to `stream`
    (None: stderr), the export's and evaluation's lines included.
    """
    if (invalid := model_name_error(name)) is not None:
        raise ValueError(invalid)
    data_format = data_format or DataFormat()
    job = Job(
        base, data, name, labels, models_dir, config, data_format, eval_data, test_data, command
    )
    with messages_to(stream):
        return _finetune_head(job) if config.method == "head" else _finetune_encoder(job)


@dataclass(frozen=True)
class Job:
    """One `finetune` call's arguments."""

    base: str
    data: Path
    name: str
    labels: list[str]
    models_dir: Path
    config: FinetuneConfig
    data_format: DataFormat
    eval_data: Path | None
    test_data: Path | None
    command: str


def _finetune_encoder(job: Job) -> ModelManifest:
    """Methods `lora` and `full`: the encoder itself trained."""
    config = job.config
    prepared = prepare_data(
        job.data,
        job.labels,
        job.data_format,
        validation_share=config.validation,
        seed=config.seed,
        eval_data=job.eval_data,
        test_data=job.test_data,
    )
    resolved = resolve_base(job.base, job.models_dir)
    max_length = config.max_length or resolved.max_length
    prepared = prepared.clipped(max_length)
    say(
        f"[data] {len(prepared.train.texts)} training rows, {len(prepared.validation.texts)} "
        f"validation rows{' (--eval)' if job.eval_data else ''}, {prepared.dropped} dropped "
        "(copies or sub-phrases of validation rows)"
    )
    set_seed(config.seed)
    with loading(job.base):
        tokenizer = AutoTokenizer.from_pretrained(resolved.directory)
        model = classifier_from_base(resolved.directory, job.labels)
    if config.method == "lora":
        model = lora_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"[model] {config.method}: {trainable:,} trainable parameters, lr {config.learning_rate}")
    job.models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        prefix=f".{job.name}-finetune-", dir=job.models_dir
    ) as scratch:
        work = Path(scratch)
        work.chmod(0o755)
        record = train_classifier(model, tokenizer, prepared, config, max_length)
        say(
            f"[train] {record.steps} steps, {record.examples} examples in {record.seconds:.0f} s; "
            f"best validation accuracy {record.best_accuracy:.4f} at step {record.best_step}"
        )
        saved = None
        if config.method == "lora":
            saved = save_lora_delta(model, tokenizer, work, resolved, job.labels, max_length)
            merged, recorded, source = saved.merged, saved.recorded, saved.record["source"]
        else:
            merged, recorded, source = model, None, f"{resolved.source} (fine-tuned in full)"
        say("[export] exporting the tuned model (parity-gated); int8 where its gate passes")
        manifest = export_classifier(
            merged,
            resolved.directory,
            job.name,
            work,
            source=source,
            max_length=max_length,
            recorded=recorded,
        )
        directory = work / job.name
        evaluation = evaluation_record(
            directory, manifest, prepared, config, record, resolved, job.command, job.eval_data
        )
        manifest.evaluation = evaluation
        manifest.default = kept_default(job.models_dir / job.name)  # a --force replacement
        manifest.write(directory)
        if saved is not None:
            write_delta(saved, work, directory, manifest, evaluation)
        replace_directory(directory, job.models_dir / job.name)
    return manifest


def _finetune_head(job: Job) -> ModelManifest:
    """Method `head`: a head on the frozen, served embeddings of a repository model."""
    from app.export.head_fit import HeadConfig
    from app.export.train_head import train_head

    config = job.config
    head_config = HeadConfig(
        hidden=config.hidden,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        held_out=config.validation,
        seed=config.seed,
    )

    def read(path: Path) -> LabelledTexts:
        return job.data_format.read(path, job.labels)

    return train_head(
        base=job.base,
        data=job.data,
        name=job.name,
        labels=job.labels,
        models_dir=job.models_dir,
        config=head_config,
        validation_data=job.eval_data,
        eval_data=job.test_data,
        command=job.command,
        read=read,
    )
