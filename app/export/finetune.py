"""`finetune`: tune an encoder for sequence classification and write a served model directory.

Methods: `lora` (peft adapters on the encoder's linear layers, the pooler and classifier
trained in full; shipped as a small delta), `full` (every weight), and `head` (a head on the
frozen, served embeddings of a repository model: `train-head`). The training loop is plain
PyTorch (AdamW, transformers' linear schedule with warm-up); early stopping keeps the weights
of the best validation accuracy. Everything is written under a scratch directory beside the
target and renamed into place at the end, so an error or Ctrl-C leaves no half-written model.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import AutoTokenizer, get_linear_schedule_with_warmup

from app.config import available_cores
from app.engine.manifest import MANIFEST_FILE, ModelManifest, model_name_error
from app.engine.passes.pipeline import open_pipeline
from app.export.delta import (
    DELTA_DIR,
    DELTA_FORMAT,
    MAX_REFERENCE_DIFF,
    REFERENCE_TEXTS,
    check_logits,
    classifier_from_base,
    export_classifier,
    merged_from_delta,
    reference_logits,
    replace_directory,
    write_record,
)
from app.export.evaluation import classification_scores
from app.export.head_fit import adamw
from app.export.labelled_data import (
    LabelledDataError,
    LabelledTexts,
    held_out_split,
    read_labelled,
    require_every_class,
)
from app.export.source import loading, read_sentence_transformer_config, resolve_source

Method = Literal["lora", "full", "head"]
METHODS: tuple[Method, ...] = ("lora", "full", "head")
# Per method, for the settings left unset (head: HeadConfig's, chosen on SST-2 held-out).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"epochs": 3, "batch_size": 32, "learning_rate": 5e-4, "weight_decay": 0.01},
    "full": {"epochs": 3, "batch_size": 32, "learning_rate": 5e-5, "weight_decay": 0.01},
    "head": {"epochs": 4, "batch_size": 256, "learning_rate": 1e-3, "weight_decay": 0.05},
}
# LoRA on every linear layer inside the encoder's blocks (BERT, RoBERTa, MiniLM: query, key,
# value, dense; DistilBERT: q_lin … lin2); the pooler and classifier are trained in full.
LORA_TARGETS = r".*\.layer\.\d+\..*\.(query|key|value|dense|q_lin|k_lin|v_lin|out_lin|lin1|lin2)"
LORA_FULLY_TRAINED = ["classifier", "pooler", "pre_classifier"]
EVAL_BATCH = 64
PLAIN_LOG_LINES = 40  # progress lines over a run when stderr is not a terminal


@dataclass(frozen=True)
class FinetuneConfig:
    """Training settings; epochs, batch size, learning rate and weight decay left as None
    take the method's METHOD_DEFAULTS."""

    method: Method = "lora"
    epochs: int = None  # type: ignore[assignment]
    max_steps: int = 0  # 0: the epochs decide; else at most this many updates
    batch_size: int = None  # type: ignore[assignment]
    learning_rate: float = None  # type: ignore[assignment]
    weight_decay: float = None  # type: ignore[assignment]
    warmup: float = 0.06  # share of the updates spent warming the learning rate up
    max_length: int | None = None  # tokens per text, trained and served; None: the base's
    validation: float = 0.1  # share of the data held out when there is no --eval file
    eval_every: int = 0  # updates between validation passes; 0: once per epoch
    patience: int = 3  # validation passes without a better accuracy before stopping
    seed: int = 0
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    hidden: int = 1024  # method head: hidden ReLU units (0: linear)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for key, value in METHOD_DEFAULTS[self.method].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        counts = (self.epochs, self.batch_size, self.patience, self.lora_rank, self.lora_alpha)
        if min(counts) < 1 or min(self.max_steps, self.eval_every, self.hidden) < 0:
            raise ValueError("epochs, batch size, patience and LoRA rank/alpha must be >= 1")
        if not 0.0 < self.validation < 1.0:
            raise ValueError(f"validation share must be between 0 and 1, got {self.validation}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError("max length must be at least 2 tokens")


@dataclass(frozen=True)
class DataFormat:
    """How to read the labelled files: columns and label coding (see `read_labelled`)."""

    text_columns: list[str] = field(default_factory=list)
    label_column: str = "label"
    first_index: int = 0

    def read(self, path: Path, labels: list[str]) -> LabelledTexts:
        return read_labelled(
            path,
            labels,
            text_columns=self.text_columns,
            label_column=self.label_column,
            first_index=self.first_index,
        )


@dataclass(frozen=True)
class PreparedData:
    train: LabelledTexts
    validation: LabelledTexts
    test: LabelledTexts | None
    dropped: int  # training rows left out: copies or sub-phrases of validation rows

    def clipped(self, max_length: int) -> PreparedData:
        """Every text cut to what `max_length` tokens can hold, before any is tokenized."""
        test = None if self.test is None else self.test.clipped(max_length)
        return PreparedData(
            self.train.clipped(max_length), self.validation.clipped(max_length), test, self.dropped
        )


def prepare_data(
    data: Path,
    labels: list[str],
    data_format: DataFormat,
    *,
    validation_share: float,
    seed: int,
    eval_data: Path | None = None,
    test_data: Path | None = None,
) -> PreparedData:
    """Every file read and checked, and the validation split made, before any training.

    Without `eval_data`, a stratified share of `data` is held out (whole sentences for
    SST-style phrase data, see `held_out_split`).
    """
    if len(labels) < 2 or len(set(labels)) != len(labels) or not all(labels):
        raise LabelledDataError(f"--labels: need at least two distinct, non-empty labels: {labels}")
    everything = data_format.read(data, labels)
    require_every_class(everything, labels, data)
    test = data_format.read(test_data, labels) if test_data else None
    if eval_data is not None:
        validation = data_format.read(eval_data, labels)
        return PreparedData(everything, validation, test, 0)
    train_rows, held_rows = held_out_split(
        everything.texts, everything.labels, validation_share, seed
    )
    if len(held_rows) == 0 or len(train_rows) == 0:
        raise LabelledDataError(f"{data}: too few rows to hold out a validation share")
    train = _subset(everything, train_rows)
    require_every_class(train, labels, data)
    dropped = len(everything.texts) - len(train_rows) - len(held_rows)
    return PreparedData(train, _subset(everything, held_rows), test, dropped)


def _subset(data: LabelledTexts, rows: np.ndarray) -> LabelledTexts:
    return LabelledTexts([data.texts[i] for i in rows], data.labels[rows])


@dataclass(frozen=True)
class ResolvedBase:
    source: str  # what delta.json records: the installed package or directory
    directory: Path  # the transformers model directory
    max_length: int


def resolve_base(base: str, models_dir: Path) -> ResolvedBase:
    """A repository model (its manifest's source and max length) or a source itself."""
    if (models_dir / base / MANIFEST_FILE).is_file():
        manifest = ModelManifest.read(models_dir / base)
        return ResolvedBase(manifest.source, resolve_source(manifest.source), manifest.max_length)
    directory = resolve_source(base)
    with loading(base):
        configured = read_sentence_transformer_config(directory).max_length
        if configured is None:
            config = json.loads((directory / "config.json").read_text())
            configured = min(512, int(config.get("max_position_embeddings", 512)))
        return ResolvedBase(base, directory, int(configured))


class TrainingProgress:
    """A tqdm bar (loss, examples/s, ETA) on a terminal; plain log lines otherwise."""

    def __init__(self, total_steps: int, batch_size: int, *, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.total = total_steps
        self.batch_size = batch_size
        self.start = time.perf_counter()
        self.examples = 0
        self.loss: float | None = None
        self.every = max(1, total_steps // PLAIN_LOG_LINES)
        self.bar: Any = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps, unit="step", file=self.stream, dynamic_ncols=True, desc="train"
            )

    def step(self, step: int, examples: int, loss: float) -> None:
        self.examples += examples
        # An exponential average: single batches are too noisy to read.
        self.loss = loss if self.loss is None else 0.95 * self.loss + 0.05 * loss
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.examples / elapsed
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.loss:.4f}", ex_s=f"{rate:.0f}", refresh=False)
            self.bar.update(1)
        elif step % self.every == 0 or step == self.total:
            eta = (self.total - step) * elapsed / step
            self.write(
                f"[train] step {step}/{self.total}: loss {self.loss:.4f}, "
                f"{rate:.0f} examples/s, ETA {eta / 60:.1f} min"
            )

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_logits(
    model: torch.nn.Module, tokenizer: Any, texts: list[str], max_length: int
) -> np.ndarray:
    """Validation logits in the training process (eval mode, length-sorted batches)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    logits = np.zeros((len(texts), 0), dtype=np.float32)
    chunks: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(order), EVAL_BATCH):
            batch = [texts[i] for i in order[start : start + EVAL_BATCH]]
            inputs = tokenizer(
                batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            chunks.append(model(**inputs).logits.float().numpy())
    if chunks:
        stacked = np.concatenate(chunks)
        logits = np.empty_like(stacked)
        logits[order] = stacked
    model.train(was_training)
    return logits


@dataclass
class TrainingRecord:
    steps: int = 0
    examples: int = 0
    seconds: float = 0.0
    best_step: int = 0
    best_accuracy: float = -1.0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # per update

    def mean_loss(self, first: bool, steps: int = 10) -> float:
        chosen = self.losses[:steps] if first else self.losses[-steps:]
        return round(float(np.mean(chosen)), 4) if chosen else float("nan")


def train_classifier(
    model: torch.nn.Module,
    tokenizer: Any,
    data: PreparedData,
    config: FinetuneConfig,
    max_length: int,
    *,
    stream: Any = None,
) -> TrainingRecord:
    """AdamW with warm-up and linear decay over the budget; early stopping on validation
    accuracy, and the best weights (those that train) restored at the end."""
    texts, labels = data.train.texts, torch.from_numpy(data.train.labels)
    steps_per_epoch = math.ceil(len(texts) / config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    eval_every = config.eval_every or steps_per_epoch
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = adamw((p for _, p in trainable), config.learning_rate, config.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, round(config.warmup * total), total)
    generator = torch.Generator().manual_seed(config.seed)
    record = TrainingRecord()
    best: dict[str, torch.Tensor] = {}
    waited = 0
    show = TrainingProgress(total, config.batch_size, stream=stream)
    start = time.perf_counter()
    model.train()
    try:
        while record.steps < total:
            for batch in torch.randperm(len(texts), generator=generator).split(config.batch_size):
                inputs = tokenizer(
                    [texts[i] for i in batch],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                )
                loss = model(**inputs, labels=labels[batch]).loss
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
                optimizer.step()
                schedule.step()
                record.steps += 1
                record.examples += len(batch)
                record.losses.append(loss.item())
                show.step(record.steps, len(batch), record.losses[-1])
                if record.steps % eval_every == 0 or record.steps == total:
                    predicted = model_logits(
                        model, tokenizer, data.validation.texts, max_length
                    ).argmax(axis=1)
                    accuracy = float(np.mean(predicted == data.validation.labels))
                    record.history.append(
                        {"step": record.steps, "validation_accuracy": round(accuracy, 4)}
                    )
                    better = accuracy > record.best_accuracy
                    if better:
                        record.best_accuracy, record.best_step, waited = accuracy, record.steps, 0
                        best = {n: p.detach().clone() for n, p in trainable}
                    else:
                        waited += 1
                    show.write(
                        f"[eval] step {record.steps}: validation accuracy {accuracy:.4f}"
                        + (" (best)" if better else f" (best {record.best_accuracy:.4f})")
                    )
                    if waited >= config.patience:
                        record.stopped_early = True
                        break
                if record.steps >= total:
                    break
            if record.stopped_early:
                break
    finally:
        show.close()
    record.seconds = round(time.perf_counter() - start, 1)
    with torch.no_grad():
        parameters = dict(trainable)
        for name, value in best.items():
            parameters[name].copy_(value)
    model.eval()
    return record


def _lora_model(model: torch.nn.Module, config: FinetuneConfig) -> torch.nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=LORA_TARGETS,
        modules_to_save=LORA_FULLY_TRAINED,
    )
    tuned: torch.nn.Module = get_peft_model(model, lora)
    return tuned


def _save_adapter(model: torch.nn.Module, target: Path, source: str) -> None:
    model.save_pretrained(target)  # type: ignore[operator]
    (target / "README.md").unlink(missing_ok=True)  # peft's empty model card
    for written in target.iterdir():
        written.chmod(0o644)  # safetensors writes 0600: the server may run as another user
    # peft records the base's absolute path (a virtualenv here); record the portable name.
    config_path = target / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = source
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")


def score_model_directory(
    directory: Path, manifest: ModelManifest, precision: str, data: LabelledTexts
) -> dict[str, Any]:
    """Scores of a written model directory, through the engine's pipeline (as served)."""
    pipeline = open_pipeline(
        directory, manifest, precision, threads=available_cores(), device="cpu"
    )
    logits = pipeline.embed(data.texts, normalized=False)
    return classification_scores(data.labels, logits.argmax(axis=1), manifest.labels)


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
    `LabelledDataError` / `ValueError` / `FileNotFoundError`.
    """
    if (invalid := model_name_error(name)) is not None:
        raise ValueError(invalid)
    data_format = data_format or DataFormat()
    if config.method == "head":
        return _finetune_head(
            base, data, name, labels, models_dir, config, data_format, eval_data, test_data, command
        )
    prepared = prepare_data(
        data,
        labels,
        data_format,
        validation_share=config.validation,
        seed=config.seed,
        eval_data=eval_data,
        test_data=test_data,
    )
    resolved = resolve_base(base, models_dir)
    max_length = config.max_length or resolved.max_length
    prepared = prepared.clipped(max_length)

    def log(line: str) -> None:
        print(line, file=stream or sys.stderr, flush=True)

    log(
        f"[data] {len(prepared.train.texts)} training rows, {len(prepared.validation.texts)} "
        f"validation rows{' (--eval)' if eval_data else ''}, {prepared.dropped} dropped "
        "(copies or sub-phrases of validation rows)"
    )
    set_seed(config.seed)
    with loading(base):
        tokenizer = AutoTokenizer.from_pretrained(resolved.directory)
        model = classifier_from_base(resolved.directory, labels)
    if config.method == "lora":
        model = _lora_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"[model] {config.method}: {trainable:,} trainable parameters, lr {config.learning_rate}")
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-finetune-", dir=models_dir) as scratch:
        work = Path(scratch)
        work.chmod(0o755)
        record = train_classifier(model, tokenizer, prepared, config, max_length, stream=stream)
        log(
            f"[train] {record.steps} steps, {record.examples} examples in {record.seconds:.0f} s; "
            f"best validation accuracy {record.best_accuracy:.4f} at step {record.best_step}"
        )
        delta: dict[str, Any] | None = None
        if config.method == "lora":
            delta_dir = work / DELTA_DIR
            _save_adapter(model, delta_dir, resolved.source)
            delta = {
                "format": DELTA_FORMAT,
                "base": resolved.source,
                "source": f"{resolved.source} + LoRA delta ({DELTA_DIR}/)",
                "labels": list(labels),
                "max_length": max_length,
            }
            trained = model_logits(model, tokenizer, list(REFERENCE_TEXTS), max_length)
            merged = merged_from_delta(delta_dir, delta)
            recorded = reference_logits(merged, resolved.directory / "tokenizer.json", max_length)
            # The saved delta must reproduce the trained model: a module left out of the
            # adapter (an untrained head) shows here, not after shipping.
            check_logits(recorded, trained, MAX_REFERENCE_DIFF, "the saved delta")
            source = delta["source"]
        else:
            merged, recorded, source = model, None, f"{resolved.source} (fine-tuned in full)"
        log("[export] exporting the tuned model (parity-gated); int8 where its gate passes")
        manifest = export_classifier(
            merged,
            resolved.directory,
            name,
            work,
            source=source,
            max_length=max_length,
            recorded=recorded,
        )
        directory = work / name
        evaluation = _evaluation(
            directory, manifest, prepared, config, record, resolved, command, eval_data
        )
        manifest.evaluation = evaluation
        manifest.write(directory)
        if delta is not None:
            delta |= {
                "precisions": sorted(p for p in ("fp32", "int8") if p in manifest.files),
                "reference_texts": list(REFERENCE_TEXTS),
                "reference_logits": np.asarray(recorded).tolist(),
                "evaluation": evaluation,
            }
            write_record(work / DELTA_DIR, delta)
            shutil.copytree(work / DELTA_DIR, directory / DELTA_DIR)
        replace_directory(directory, models_dir / name)
    return manifest


def _evaluation(
    directory: Path,
    manifest: ModelManifest,
    prepared: PreparedData,
    config: FinetuneConfig,
    record: TrainingRecord,
    resolved: ResolvedBase,
    command: str,
    eval_data: Path | None,
) -> dict[str, Any]:
    validation = score_model_directory(directory, manifest, "fp32", prepared.validation)
    print(
        f"[eval] validation (served fp32 graph): accuracy {validation['accuracy']:.4f}, "
        f"macro-F1 {validation['macro_f1']:.4f}",
        file=sys.stderr,
        flush=True,
    )
    evaluation: dict[str, Any] = {
        "method": config.method,
        "base": resolved.source,
        "train_examples": len(prepared.train.texts),
        "validation_source": "--eval file"
        if eval_data
        else (f"stratified {config.validation:.0%} of the training file held out"),
        "validation": validation,
    }
    if "int8" in manifest.files:
        int8 = score_model_directory(directory, manifest, "int8", prepared.validation)
        evaluation["validation_int8_accuracy"] = int8["accuracy"]
    if prepared.test is not None:
        evaluation["test"] = score_model_directory(directory, manifest, "fp32", prepared.test)
        print(
            f"[eval] test: accuracy {evaluation['test']['accuracy']:.4f}",
            file=sys.stderr,
            flush=True,
        )
    hyperparameters = {
        key: value
        for key, value in asdict(config).items()
        if key != "hidden" and (config.method == "lora" or not key.startswith("lora"))
    }
    hyperparameters["max_length"] = manifest.max_length
    evaluation |= {
        "training": {
            "steps": record.steps,
            "examples_seen": record.examples,
            "seconds": record.seconds,
            "best_step": record.best_step,
            "stopped_early": record.stopped_early,
            "loss_first_10_steps": record.mean_loss(first=True),
            "loss_last_10_steps": record.mean_loss(first=False),
            "history": record.history,
        },
        "hyperparameters": hyperparameters,
        "seed": config.seed,
        "command": command,
    }
    return evaluation


def _finetune_head(
    base: str,
    data: Path,
    name: str,
    labels: list[str],
    models_dir: Path,
    config: FinetuneConfig,
    data_format: DataFormat,
    eval_data: Path | None,
    test_data: Path | None,
    command: str,
) -> ModelManifest:
    from app.export.head_fit import HeadConfig
    from app.export.train_head import train_head

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
        return data_format.read(path, labels)

    return train_head(
        base=base,
        data=data,
        name=name,
        labels=labels,
        models_dir=models_dir,
        config=head_config,
        validation_data=eval_data,
        eval_data=test_data,
        command=command,
        read=read,
    )
