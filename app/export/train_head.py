"""`finetune --method head` (alias `train-head`): a head on a base model's frozen embeddings.

The head model shares the base model's graph and batcher in the server; only the head is
written (`head.npz`), trained with PyTorch (app/export/head_fit.py).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.config import available_cores
from app.engine.manifest import MANIFEST_FILE, ModelManifest, kept_default, model_name_error
from app.engine.models.heads import ClassifierHead
from app.engine.passes.pipeline import OFFLINE_BATCH, open_pipeline
from app.export.evaluation import classification_scores
from app.export.head_fit import MIN_STEPS, HeadConfig, HeadFit, fit_head
from app.export.labelled_data import (
    LabelledTexts,
    clip_texts,
    held_out_split,
    read_labelled,
    require_every_class,
)
from app.export.messages import say

HEAD_FILE = "head.npz"
PROGRESS_EVERY = 3200  # texts between progress lines


def progress(stage: str, message: str) -> None:
    say(f"[{stage}] {message}")


class FeatureExtractor:
    """The served head's input: the base model's pooled, L2-normalized vector per text."""

    def __init__(self, base_dir: Path, *, threads: int | None = None) -> None:
        self.manifest = ModelManifest.read(base_dir)
        if self.manifest.task != "embedding" or "fp32" not in self.manifest.files:
            raise ValueError(f"{base_dir}: the base must be a built embedding model")
        # fp32 in padded passes: the served vectors of any precision approximate these.
        self._pipeline = open_pipeline(
            base_dir,
            self.manifest,
            "fp32",
            threads=threads or available_cores(),
            device="cpu",
            rows_per_pass=OFFLINE_BATCH,
        )

    def embed(self, texts: list[str], *, stage: str = "embed") -> np.ndarray:
        start = time.perf_counter()
        shown = 0

        def report(done: int, total: int) -> None:
            nonlocal shown
            if done == total or done - shown >= PROGRESS_EVERY:
                shown = done
                rate = done / max(time.perf_counter() - start, 1e-9)
                progress(stage, f"{done}/{total} ({rate:.0f}/s)")

        # Cut first: the pipeline tokenizes each text whole before truncating it.
        clipped = clip_texts(texts, self.manifest.max_length)
        return self._pipeline.embed(clipped, progress=report)


def accuracy(head: ClassifierHead, features: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(head.logits(features).argmax(axis=1) == labels))


def _write_model(directory: Path, head: ClassifierHead, manifest: ModelManifest) -> None:
    """Write head and manifest next to the target first, so a failure leaves the old model;
    a model replaced (`--force`) goes whole, whatever method made it."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".train-head-", dir=directory.parent))
    try:
        scratch.chmod(0o755)  # readable by a server running as another user
        head.save(scratch / HEAD_FILE)
        manifest.default = kept_default(directory)  # a --force replacement keeps the marker
        manifest.write(scratch)
        if directory.exists():
            shutil.rmtree(directory)
        scratch.rename(directory)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def train_head(
    *,
    base: str,
    data: Path,
    name: str,
    labels: list[str],
    models_dir: Path,
    config: HeadConfig,
    eval_data: Path | None = None,
    validation_data: Path | None = None,
    command: str = "",
    read: Callable[[Path], LabelledTexts] | None = None,
) -> ModelManifest:
    """Train a head on `base`'s embeddings of `data` and write it as model `name`.

    The head is measured on a held-out share of `data` (or on `validation_data`, then all of
    `data` trains it) and reported on `eval_data`, never used for any choice.
    """
    if (invalid := model_name_error(name)) is not None:
        raise ValueError(invalid)
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError(f"need at least two distinct labels, got {labels}")
    base_dir = models_dir / base
    if not (base_dir / MANIFEST_FILE).exists():
        raise FileNotFoundError(f"no base model '{base}' in {models_dir} (export it first)")
    read = read or (lambda path: read_labelled(path, labels))
    train_set = read(data)
    require_every_class(train_set, labels, data)
    evaluation_set = read(eval_data) if eval_data else None
    validation_set = read(validation_data) if validation_data else None
    if validation_set is None:
        train_rows, held_rows = held_out_split(
            train_set.texts, train_set.labels, config.held_out, config.seed
        )
    else:
        train_rows, held_rows = np.arange(len(train_set.texts)), np.zeros(0, dtype=np.int64)
    dropped = len(train_set.texts) - len(train_rows) - len(held_rows)
    extractor = FeatureExtractor(base_dir)
    progress(
        "split",
        f"{len(train_rows)} training rows, {len(held_rows)} held out, {dropped} dropped "
        "(sub-phrases or copies of held-out rows)",
    )
    features = extractor.embed(train_set.texts)
    if validation_set is None:
        held_features, held_labels = features[held_rows], train_set.labels[held_rows]
    else:
        held_features = extractor.embed(validation_set.texts, stage="validation")
        held_labels = validation_set.labels

    by_epoch: list[list[float]] = [[] for _ in range(config.members)]

    def report(member: int, epoch: int, epochs: int, score: float | None) -> None:
        if score is not None:
            by_epoch[member].append(round(score, 4))
        if member == 0 and epoch == 0 and epochs > config.epochs:
            progress(
                "train",
                f"{config.epochs} epochs of {len(train_rows)} rows are fewer than {MIN_STEPS} "
                f"updates: training {epochs} epochs, so that the head sees {MIN_STEPS} at least",
            )
        if epochs > 20 and (epoch + 1) % (epochs // 10) != 0:
            return  # small data sets run hundreds of short epochs: show about ten
        shown = "no held-out rows" if score is None else f"held-out accuracy {score:.4f}"
        progress(
            "train", f"head {member + 1}/{config.members}, epoch {epoch + 1}/{epochs}: {shown}"
        )

    start = time.perf_counter()
    fit = fit_head(
        features[train_rows],
        train_set.labels[train_rows],
        len(labels),
        config,
        report,
        validation=(held_features, held_labels),
    )
    head = fit.head
    seconds = round(time.perf_counter() - start, 1)
    # The shape of `finetune`'s evaluation: scores on the validation data, and on the
    # evaluation file as "test".
    evaluation: dict[str, Any] = {
        "method": "head",
        "train_examples": len(train_rows),
        "validation": classification_scores(
            held_labels, head.logits(held_features).argmax(axis=1), labels
        ),
    }
    validation_accuracy = evaluation["validation"]["accuracy"]
    progress(
        "train",
        f"{config.describe(fit.epochs)}: kept the weights of epoch "
        f"{_kept(fit.kept_epochs)} ({_why_kept(fit)}); held-out accuracy "
        f"{validation_accuracy:.4f}",
    )
    if evaluation_set is not None:
        eval_features = extractor.embed(evaluation_set.texts, stage="eval")
        evaluation["test"] = classification_scores(
            evaluation_set.labels, head.logits(eval_features).argmax(axis=1), labels
        )
        test_accuracy = evaluation["test"]["accuracy"]
        progress("eval", f"accuracy {test_accuracy:.4f} on {len(evaluation_set.texts)} examples")
    evaluation |= {
        "features": f"{base}: {extractor.manifest.pooling} pooling, L2-normalized",
        "head": config.describe(fit.epochs),
        "training": {
            "seconds": seconds,
            "epochs": fit.epochs,
            "kept_epochs": list(fit.kept_epochs),
            "held_out_accuracy_by_epoch": by_epoch,  # per member
        },
        "seed": config.seed,
        "command": command,
    }
    manifest = _head_manifest(name, base, extractor.manifest, labels, evaluation)
    _write_model(models_dir / name, head, manifest)
    return manifest


def _kept(epochs: tuple[int, ...]) -> str:
    return ", ".join(str(epoch) for epoch in epochs)


def _why_kept(fit: HeadFit) -> str:
    if fit.kept_accuracies[0] is None:
        return "the last: no held-out rows to choose by"
    return "the best held-out accuracy" + (" of each member" if len(fit.kept_epochs) > 1 else "")


def _head_manifest(
    name: str,
    base: str,
    base_manifest: ModelManifest,
    labels: list[str],
    evaluation: dict[str, Any],
) -> ModelManifest:
    return ModelManifest(
        name=name,
        task="classification",
        source=base_manifest.source,
        pooling=base_manifest.pooling,
        max_length=base_manifest.max_length,
        dimensions=base_manifest.dimensions,
        num_layers=base_manifest.num_layers,
        num_heads=base_manifest.num_heads,
        tokenizer=base_manifest.tokenizer,
        labels=list(labels),
        files={},  # the base model's graph runs the encoder
        base=base,
        head=HEAD_FILE,
        evaluation=evaluation,
    )
