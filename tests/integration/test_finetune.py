"""`encoder-serve finetune` end to end on a tiny encoder: each method trains and the loss falls,
the written directory serves /classify and /attention, the seed decides the result, the delta
rebuilds the same model and a tampered delta fails loudly, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.cli import build_parser
from app.config import Settings
from app.engine.manifest import ModelManifest
from app.engine.passes.pipeline import open_pipeline
from app.export.delta import DELTA_DIR, REFERENCE_TEXTS, read_record
from app.export.exporter import export_model
from app.export.finetune import FinetuneConfig, finetune
from tests.conftest import wait_ready
from tests.tiny_models import build_tiny_bert
from tests.unit.test_train_head import NEGATIVE, POSITIVE

LABELS = ["negative", "positive"]
TRAINING = ["--epochs", "6", "--learning-rate", "3e-3", "--patience", "100"]
TRAINING += ["--validation", "0.2", "--batch-size", "8"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune")
    base = build_tiny_bert(root / "tiny-source")
    rows = [(text, "positive") for text in POSITIVE] + [(text, "negative") for text in NEGATIVE]
    data = root / "mood.csv"
    data.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    return {"root": root, "base": base, "data": data}


def run_finetune(workspace: dict[str, Path], models: Path, *extra: str, base: str = "") -> int:
    argv = ["finetune", "--data", str(workspace["data"]), "--name", "mood"]
    argv += ["--labels", ",".join(LABELS), "--models-dir", str(models)]
    argv += ["--base", base or str(workspace["base"]), *TRAINING, *extra]
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


def served(models: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(models_dir=models))) as client:
        wait_ready(client.get)
        yield client


def check_serves(models: Path) -> None:
    for client in served(models):
        response = client.post("/classify", json={"inputs": POSITIVE[:2], "model": "mood"})
        assert response.status_code == 200, response.text
        for result in response.json()["results"]:
            assert {entry["label"] for entry in result} == set(LABELS)
        attention = client.post("/attention", json={"inputs": POSITIVE[0], "model": "mood"})
        assert attention.status_code == 200, attention.text
        info = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert info["mood"]["task"] == "classification" and info["mood"]["labels"] == LABELS


def check_training(manifest: ModelManifest, method: str) -> None:
    evaluation = manifest.evaluation
    assert evaluation["method"] == method and evaluation["seed"] == 0
    assert evaluation["command"].startswith(f"encoder-serve finetune --method {method} ")
    validation = evaluation["validation"]
    assert validation["examples"] == 8 and set(validation["per_class"]) == set(LABELS)
    assert np.asarray(validation["confusion_matrix"]["counts"]).sum() == 8
    assert {"accuracy", "macro_f1"} <= set(validation)
    training = evaluation["training"]
    assert training["loss_last_10_steps"] < training["loss_first_10_steps"]


@pytest.fixture(scope="module")
def lora_repository(workspace: dict[str, Path]) -> Path:
    models = workspace["root"] / "lora"
    assert run_finetune(workspace, models) == 0
    return models


def test_lora_writes_a_served_model_with_a_small_delta(lora_repository: Path) -> None:
    directory = lora_repository / "mood"
    assert [p.name for p in lora_repository.iterdir()] == ["mood"]  # no scratch left behind
    manifest = ModelManifest.read(directory)
    assert manifest.task == "classification" and manifest.labels == LABELS
    assert {"fp32", "attention", "torch"} <= set(manifest.files)
    check_training(manifest, "lora")
    delta = directory / DELTA_DIR
    files = sorted(p.name for p in delta.iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "delta.json"]
    assert sum(p.stat().st_size for p in delta.iterdir()) < 4 * 2**20
    record = read_record(delta)
    assert record["labels"] == LABELS and record["evaluation"] == manifest.evaluation
    assert len(record["reference_logits"]) == len(REFERENCE_TEXTS)
    check_serves(lora_repository)


def test_the_seed_decides_the_result(workspace: dict[str, Path], lora_repository: Path) -> None:
    again = workspace["root"] / "lora-again"
    assert run_finetune(workspace, again) == 0
    first = read_record(lora_repository / "mood" / DELTA_DIR)
    second = read_record(again / "mood" / DELTA_DIR)
    assert second["reference_logits"] == first["reference_logits"]
    first_training, second_training = (
        {key: value for key, value in record["evaluation"]["training"].items() if key != "seconds"}
        for record in (first, second)
    )
    assert second_training == first_training  # losses, validation history, best step


def committed_copy(source: Path, target: Path) -> Path:
    """What a fresh clone holds of a tuned model: its manifest and its delta."""
    (target / "mood").mkdir(parents=True)
    shutil.copy2(source / "mood" / "model.json", target / "mood" / "model.json")
    shutil.copytree(source / "mood" / DELTA_DIR, target / "mood" / DELTA_DIR)
    return target


def rebuild(models: Path) -> int:
    args = build_parser().parse_args(["rebuild", "--models-dir", str(models), "--skip-existing"])
    code: int = args.handler(args)
    return code


def test_the_delta_rebuilds_the_same_model(
    workspace: dict[str, Path], lora_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = committed_copy(lora_repository, workspace["root"] / "clone")
    assert rebuild(models) == 0
    assert rebuild(models) == 0  # built: skipped
    assert "already built" in capsys.readouterr().out
    manifest = ModelManifest.read(models / "mood")
    original = ModelManifest.read(lora_repository / "mood")
    assert manifest.evaluation == original.evaluation and manifest.labels == LABELS

    def logits(directory: Path) -> np.ndarray:
        found = ModelManifest.read(directory)
        pipeline = open_pipeline(directory, found, "fp32", threads=1, device="cpu")
        return pipeline.embed(REFERENCE_TEXTS, normalized=False)

    np.testing.assert_allclose(logits(models / "mood"), logits(lora_repository / "mood"), atol=1e-5)
    check_serves(models)


def test_a_tampered_delta_fails_loudly_and_writes_nothing(
    workspace: dict[str, Path], lora_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.numpy import load_file, save_file

    models = committed_copy(lora_repository, workspace["root"] / "tampered")
    weights_path = models / "mood" / DELTA_DIR / "adapter_model.safetensors"
    weights = load_file(weights_path)
    name = next(key for key in weights if "classifier" in key and key.endswith("weight"))
    weights[name] = weights[name] + np.float32(0.5)
    save_file(weights, weights_path)
    before = sorted(p.name for p in (models / "mood").iterdir())
    assert rebuild(models) == 1
    error = capsys.readouterr().err
    assert "differ from those recorded at training time" in error
    assert sorted(p.name for p in (models / "mood").iterdir()) == before
    assert sorted(p.name for p in models.iterdir()) == ["mood"]

    record_path = models / "mood" / DELTA_DIR / "delta.json"
    shutil.copy2(lora_repository / "mood" / DELTA_DIR / "adapter_model.safetensors", weights_path)
    record = json.loads(record_path.read_text())
    record["reference_logits"][0][0] += 0.01  # recorded logits that no longer match
    record_path.write_text(json.dumps(record))
    assert rebuild(models) == 1
    assert "differ from those recorded" in capsys.readouterr().err


def test_full_fine_tuning_trains_every_weight(workspace: dict[str, Path]) -> None:
    models = workspace["root"] / "full"
    assert run_finetune(workspace, models, "--method", "full") == 0
    manifest = ModelManifest.read(models / "mood")
    check_training(manifest, "full")
    assert not (models / "mood" / DELTA_DIR).exists()  # no small delta for a full tune
    check_serves(models)


def test_head_method_trains_on_a_served_base(workspace: dict[str, Path]) -> None:
    models = workspace["root"] / "head"
    models.mkdir()
    export_model(str(workspace["base"]), "tiny", models)
    code = run_finetune(workspace, models, "--method", "head", "--hidden", "16", base="tiny")
    assert code == 0
    manifest = ModelManifest.read(models / "mood")
    assert (manifest.base, manifest.head) == ("tiny", "head.npz")
    evaluation = manifest.evaluation
    assert evaluation["method"] == "head" and evaluation["validation"]["examples"] == 8
    assert evaluation["command"].startswith("encoder-serve finetune --method head --base tiny")
    # 6 epochs of 4 updates are fewer than MIN_STEPS (300): it ran 75, and says so.
    training = evaluation["training"]
    assert training["epochs"] == 75 and "75 epochs" in evaluation["head"]
    # The weights kept are those of the first epoch with the best held-out accuracy.
    (history,) = training["held_out_accuracy_by_epoch"]
    (kept,) = training["kept_epochs"]
    assert len(history) == 75 and history[kept - 1] == max(history) > max(
        history[: kept - 1] or [-1]
    )
    assert evaluation["validation"]["accuracy"] == pytest.approx(max(history), abs=1e-4)
    check_serves(models)


def test_ctrl_c_leaves_no_model_directory(
    workspace: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.export.finetune.command as finetune_module

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune_module, "export_classifier", interrupted)
    models = workspace["root"] / "interrupted"
    assert run_finetune(workspace, models, "--epochs", "1") == 130
    assert list(models.iterdir()) == []


def test_every_message_goes_to_the_given_stream(
    workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """One stream for the whole command: training, export and evaluation lines alike (the
    evaluation's lines went to stderr whatever the stream)."""
    stream = io.StringIO()
    finetune(
        base=str(workspace["base"]),
        data=workspace["data"],
        name="mood",
        labels=LABELS,
        models_dir=workspace["root"] / "streamed",
        config=FinetuneConfig(method="full", max_steps=2, batch_size=8, validation=0.2),
        stream=stream,
    )
    said = stream.getvalue()
    for expected in (
        "[data] ",
        "[model] full",
        "[train] step 2/2",
        "[eval] step 2",
        "[export] ",
        "[1/",
        "raw graph",
        "[eval] validation (served fp32 graph)",
    ):
        assert expected in said, f"{expected!r} not in the stream:\n{said}"
    error = capsys.readouterr().err
    assert not [line for line in error.splitlines() if line.strip() and line.strip() in said]
    assert "[eval]" not in error and "[export]" not in error and "raw graph" not in error
