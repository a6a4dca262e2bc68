"""`compress`'s evaluation record: the student scored as served beside its teacher on the
same texts, its measured speed-up, and how it was made (what `model.json`'s `evaluation`
and delta.json hold)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from app.config import available_cores
from app.engine.manifest import ModelManifest
from app.engine.passes.pipeline import open_pipeline
from app.export.compress.config import CompressConfig
from app.export.compress.data import CompressData, Texts
from app.export.compress.speed import engine_speedup
from app.export.compress.teacher import Teacher, teacher_outputs
from app.export.compress.training import mean_cosine
from app.export.evaluation import classification_scores
from app.export.finetune import TrainingRecord
from app.export.finetune.retrieval import rank_of, retrieval_scores
from app.export.messages import say


def graph_outputs(directory: Path, manifest: ModelManifest, precision: str, texts: list[str]):
    pipeline = open_pipeline(
        directory, manifest, precision, threads=available_cores(), device="cpu"
    )
    return np.asarray(pipeline.embed(texts, normalized=False), dtype=np.float32)


def teachers_neighbours(found: np.ndarray, teacher: np.ndarray) -> dict[str, float | int]:
    """Retrieval figures of an embedding student with no labelled pairs needed: each text
    queries the others, and its right answer is the teacher's nearest neighbour among them
    (cosine); R@1, R@10 and MRR@10 of where the student ranks it. The teacher scores 1.0
    by construction: the figure says how far a student's search results move from its
    teacher's."""
    if len(found) < 2:
        return {"queries": 0}

    def similarities(vectors: np.ndarray) -> np.ndarray:
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        scores = unit @ unit.T
        np.fill_diagonal(scores, -np.inf)  # a text is not its own answer
        return scores

    right = similarities(teacher).argmax(axis=1)
    ranks = [rank_of(row, int(a)) for row, a in zip(similarities(found), right, strict=True)]
    return retrieval_scores(ranks)


def scores(
    found: np.ndarray, teacher: np.ndarray, data: Texts, labels: list[str]
) -> dict[str, Any]:
    """A classifier's scores on the true labels (when given) and agreement with the teacher;
    an embedding model's cosine to the teacher and how it finds the teacher's neighbours."""
    if not labels:
        cosine = mean_cosine(found, teacher)
        return {
            "examples": len(data.texts),
            "mean_cosine_to_teacher": round(float(cosine.mean()), 4),
            "min_cosine_to_teacher": round(float(cosine.min()), 4),
            "teachers_neighbours": teachers_neighbours(found, teacher),
        }
    predicted = found.argmax(axis=1)
    result: dict[str, Any] = {"examples": len(data.texts)}
    if data.labels is not None:
        result |= classification_scores(data.labels, predicted, labels)
    result["agreement_with_teacher"] = round(float(np.mean(predicted == teacher.argmax(axis=1))), 4)
    return result


def teacher_scores(outputs: np.ndarray, data: Texts, labels: list[str]) -> dict[str, Any]:
    if not labels or data.labels is None:
        return {"examples": len(data.texts)}
    return classification_scores(data.labels, outputs.argmax(axis=1), labels)


def headline(scored: dict[str, Any]) -> str:
    if "accuracy" in scored:
        return f"accuracy {scored['accuracy']:.4f}"
    if "mean_cosine_to_teacher" in scored:
        neighbours = scored["teachers_neighbours"]
        return (
            f"mean cosine to the teacher {scored['mean_cosine_to_teacher']:.4f}; finds the "
            f"teacher's nearest neighbour first for {neighbours.get('r_at_1', 0):.4f}"
        )
    return f"agreement with the teacher {scored['agreement_with_teacher']:.4f}"


def evaluation_record(
    directory: Path,
    manifest: ModelManifest,
    teacher: Teacher,
    teacher_validation: np.ndarray,
    data: CompressData,
    config: CompressConfig,
    keep: list[int],
    record: TrainingRecord,
    command: str,
    eval_data: Path | None,
) -> dict[str, Any]:
    labels = manifest.labels
    found = graph_outputs(directory, manifest, "fp32", data.validation.texts)
    validation = scores(found, teacher_validation, data.validation, labels)
    teacher_validation_scores = teacher_scores(teacher_validation, data.validation, labels)
    say(f"[eval] validation (served fp32 graph): student {headline(validation)}")
    if "accuracy" in teacher_validation_scores:
        say(f"[eval] validation: teacher accuracy {teacher_validation_scores['accuracy']:.4f}")
    evaluation: dict[str, Any] = {
        "method": f"distillation ({'full' if not labels else config.method})",
        "teacher": teacher.name,
        "teacher_layers": teacher.manifest.num_layers,
        "keep_layers": keep,
        "train_examples": len(data.train.texts),
        "labelled": data.train.labels is not None,
        "validation_source": "--eval file"
        if eval_data
        else f"{config.validation:.0%} of the training file held out",
        "validation": validation,
        "teacher_validation": teacher_validation_scores,
    }
    if "int8" in manifest.files:
        int8 = graph_outputs(directory, manifest, "int8", data.validation.texts)
        evaluation["validation_int8"] = scores(int8, teacher_validation, data.validation, labels)
    if data.test is not None:
        teacher_test = teacher_outputs(teacher, data.test.texts)
        student_test = graph_outputs(directory, manifest, "fp32", data.test.texts)
        evaluation["test"] = scores(student_test, teacher_test, data.test, labels)
        evaluation["teacher_test"] = teacher_scores(teacher_test, data.test, labels)
        say(f"[eval] test: student {headline(evaluation['test'])}")
        if "accuracy" in evaluation["teacher_test"]:
            say(f"[eval] test: teacher accuracy {evaluation['teacher_test']['accuracy']:.4f}")
    say("[speed] teacher and student fp32 graphs, batch 32, alternating rounds")
    speed = engine_speedup(
        (teacher.directory, teacher.manifest), (directory, manifest), data.validation.texts
    )
    say(
        f"[speed] {speed['student_sequences_per_s']} vs {speed['teacher_sequences_per_s']} "
        f"sequences/s: {speed['ratio']:.2f} x the teacher"
    )
    evaluation |= {
        "speedup": speed,
        "training": {
            "steps": record.steps,
            "examples_seen": record.examples,
            "seconds": record.seconds,
            "best_step": record.best_step,
            "best_validation": round(record.best_accuracy, 4),
            "stopped_early": record.stopped_early,
            "loss_first_10_steps": record.mean_loss(first=True),
            "loss_last_10_steps": record.mean_loss(first=False),
            "history": record.history,
        },
        "hyperparameters": asdict(config) | {"max_length": manifest.max_length},
        "seed": config.seed,
        "command": command,
    }
    return evaluation
