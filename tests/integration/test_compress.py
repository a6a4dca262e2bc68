"""`encoder-serve compress` end to end on tiny encoders: layer dropping keeps the chosen
layers' weights exactly, distillation lowers the loss against the teacher, the written student
serves /classify, /attention and /explain, bad input exits 2 and writes nothing, a student's
delta rebuilds the same model, and an embedding student is distilled on unlabelled text."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from app.api.app import create_app
from app.cli import build_parser
from app.config import Settings
from app.engine.manifest import ModelManifest
from app.engine.passes.pipeline import open_pipeline
from app.export.compress import CompressConfig, distillation_loss
from app.export.compress.data import Texts
from app.export.compress.evaluation import teachers_neighbours
from app.export.compress.teacher import (
    Teacher,
    resolve_teacher,
    student_start,
    teacher_outputs,
)
from app.export.compress.training import Targets, distil
from app.export.delta import DELTA_DIR, REFERENCE_TEXTS, merged_from_delta, read_record
from app.export.dense_delta import (
    DENSE_DELTA_FILE,
    FORMAT,
    LEVELS,
    apply_dense_delta,
    quantized_delta,
    save_dense_delta,
    starting_point,
    train_as_stored,
)
from app.export.exporter import export_model
from app.export.layers import encoder_layers, narrow_feed_forward, parse_keep_layers
from tests.conftest import wait_ready
from tests.tiny_models import copy_tokenizer, tiny_bert_config
from tests.unit.test_train_head import NEGATIVE, POSITIVE

LABELS = ["negative", "positive"]
TEACHER_TRAINING = ["--epochs", "6", "--learning-rate", "3e-3", "--patience", "100"]
TEACHER_TRAINING += ["--validation", "0.2", "--batch-size", "8"]
STUDENT_TRAINING = ["--epochs", "4", "--learning-rate", "3e-3", "--batch-size", "8"]
STUDENT_TRAINING += ["--validation", "0.2", "--keep-layers", "0,2"]


def build_tiny_bert4(target: Path) -> Path:
    """A random 4-layer BertModel directory with a real tokenizer (a teacher to halve)."""
    from transformers import BertModel

    torch.manual_seed(0)
    target.mkdir(parents=True, exist_ok=True)
    config = tiny_bert_config()
    config.num_hidden_layers = 4
    BertModel(config).save_pretrained(target)
    copy_tokenizer(target)
    return target


def run_cli(*argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    code: int = args.handler(args)
    return code


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A repository holding `mood`: a 4-layer tiny encoder tuned with LoRA, shipped as a delta."""
    root = tmp_path_factory.mktemp("compress")
    base = build_tiny_bert4(root / "tiny-source")
    rows = [(text, "positive") for text in POSITIVE] + [(text, "negative") for text in NEGATIVE]
    data = root / "mood.csv"
    data.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    models = root / "models"
    argv = ["finetune", "--data", str(data), "--name", "mood", "--labels", ",".join(LABELS)]
    assert run_cli(*argv, "--models-dir", str(models), "--base", str(base), *TEACHER_TRAINING) == 0
    return {"root": root, "base": base, "data": data, "models": models}


def run_compress(workspace: dict[str, Path], *extra: str, name: str = "mood-small") -> int:
    argv = ["compress", "--from", str(workspace["models"] / "mood"), "--name", name]
    argv += ["--data", str(workspace["data"]), "--models-dir", str(workspace["models"])]
    return run_cli(*argv, *STUDENT_TRAINING, *extra)


@pytest.fixture(scope="module")
def student(workspace: dict[str, Path]) -> Path:
    assert run_compress(workspace, "--method", "lora") == 0
    return workspace["models"] / "mood-small"


def test_parse_keep_layers() -> None:
    assert parse_keep_layers(None, 6) == [1, 3, 5]  # every other, ending with the last
    assert parse_keep_layers("", 5) == [0, 2, 4]
    assert parse_keep_layers(None, 2) == [1]
    assert parse_keep_layers("1, 3", 6) == [1, 3]
    for bad in ("0,6", "2,1", "0,0", "a", ",", "0,1,2,3"):
        with pytest.raises(ValueError, match="--keep-layers"):
            parse_keep_layers(bad, 4)


def teacher_and_its_model(workspace: dict[str, Path]) -> tuple[Teacher, torch.nn.Module]:
    """`mood` and its whole model, rebuilt from its delta as a student starts from it."""
    delta = workspace["models"] / "mood" / DELTA_DIR
    return resolve_teacher("mood", workspace["models"]), merged_from_delta(
        delta, read_record(delta)
    )


def test_layer_dropping_keeps_the_chosen_layers_weights_exactly(
    workspace: dict[str, Path],
) -> None:
    teacher, full = teacher_and_its_model(workspace)
    model, shape = student_start(teacher, "1,3", None)
    keep = shape.keep_layers
    assert keep == [1, 3] and shape.neurons is None and model.config.num_hidden_layers == 2
    _, _, student_layers = encoder_layers(model)
    _, _, teacher_layers = encoder_layers(full)
    assert len(student_layers) == 2 and len(teacher_layers) == 4
    for position, index in enumerate(keep):
        found = student_layers[position].state_dict()
        expected = teacher_layers[index].state_dict()
        assert found.keys() == expected.keys()
        for key in expected:
            assert torch.equal(found[key], expected[key]), key
    # Everything outside the blocks (embeddings, pooler, classifier) is the teacher's too.
    outside = {k: v for k, v in full.state_dict().items() if ".encoder.layer." not in k}
    kept = model.state_dict()
    assert all(torch.equal(kept[key], value) for key, value in outside.items())


def test_narrowing_keeps_each_blocks_strongest_neurons_weights_exactly(
    workspace: dict[str, Path],
) -> None:
    teacher, full = teacher_and_its_model(workspace)
    model, shape = student_start(teacher, "0,3", 24)
    assert shape.keep_layers == [0, 3] and model.config.intermediate_size == 24
    assert shape.neurons is not None and [len(kept) for kept in shape.neurons] == [24, 24]
    student_layers, teacher_layers = encoder_layers(model)[2], encoder_layers(full)[2]
    for position, index in enumerate(shape.keep_layers):
        found, expected = student_layers[position], teacher_layers[index]
        kept = shape.neurons[position]
        into, out_of = expected.intermediate.dense, expected.output.dense
        strength = into.weight.norm(dim=1) * out_of.weight.norm(dim=0)
        assert strength[kept].min() >= strength[[i for i in range(64) if i not in kept]].max()
        assert torch.equal(found.intermediate.dense.weight, into.weight[kept])
        assert torch.equal(found.intermediate.dense.bias, into.bias[kept])
        assert torch.equal(found.output.dense.weight, out_of.weight[:, kept])
        assert torch.equal(found.output.dense.bias, out_of.bias)
        assert torch.equal(found.attention.self.query.weight, expected.attention.self.query.weight)
    with pytest.raises(ValueError, match="--intermediate-size: between 1 and 63"):
        student_start(teacher, "0,3", 64)
    with pytest.raises(ValueError, match="one list per block"):
        narrow_feed_forward(model, [[0, 1], [0]])
    with pytest.raises(ValueError, match="distinct, increasing"):
        narrow_feed_forward(model, [[1, 0], [0, 1]])


def test_distillation_lowers_the_loss_against_the_teacher(workspace: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    teacher = resolve_teacher("mood", workspace["models"])
    texts = POSITIVE + NEGATIVE
    targets = teacher_outputs(teacher, texts)
    model, _ = student_start(teacher, "0", None)
    with torch.no_grad():  # a head far from the teacher's, so there is a loss to lower
        model.classifier.weight.normal_(std=2.0, generator=torch.Generator().manual_seed(0))
    tokenizer = AutoTokenizer.from_pretrained(teacher.directory)
    config = CompressConfig(method="full", learning_rate=3e-3, max_steps=8, batch_size=8)

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            inputs = tokenizer(texts, padding=True, return_tensors="pt")
            logits = model(**inputs).logits
        value = distillation_loss(logits, torch.from_numpy(targets), None, config, False)
        return float(value)

    before = loss()
    record = distil(
        model,
        tokenizer,
        Texts(texts, None),
        Texts(texts[:4], None),
        Targets(targets, targets[:4]),
        config,
        64,
        embedding=False,
    )
    assert record.steps == 8
    assert loss() < 0.8 * before


def served(models: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(models_dir=models))) as client:
        wait_ready(client.get)
        yield client


def test_compress_writes_a_served_student(workspace: dict[str, Path], student: Path) -> None:
    assert not [p.name for p in workspace["models"].iterdir() if p.name.startswith(".")]
    manifest = ModelManifest.read(student)
    assert manifest.task == "classification" and manifest.labels == LABELS
    assert manifest.num_layers == 2 and {"fp32", "attention", "torch"} <= set(manifest.files)
    evaluation = manifest.evaluation
    assert evaluation["teacher"] == "mood" and evaluation["keep_layers"] == [0, 2]
    assert evaluation["teacher_layers"] == 4 and evaluation["labelled"] is True
    for key in ("validation", "teacher_validation"):
        assert evaluation[key]["examples"] == 8 and "accuracy" in evaluation[key]
    assert 0.0 <= evaluation["validation"]["agreement_with_teacher"] <= 1.0
    speed = evaluation["speedup"]
    assert speed["ratio"] > 0 and speed["batch_size"] == 32 and speed["precision"] == "fp32"
    training = evaluation["training"]
    assert training["loss_last_10_steps"] < training["loss_first_10_steps"]
    assert evaluation["command"].startswith("encoder-serve compress --from ")
    files = sorted(p.name for p in (student / DELTA_DIR).iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "delta.json"]
    record = read_record(student / DELTA_DIR)
    assert record["student"] == {"teacher": "mood", "keep_layers": [0, 2]}
    for client in served(workspace["models"]):
        answer = client.post("/classify", json={"inputs": POSITIVE[:2], "model": "mood-small"})
        assert answer.status_code == 200, answer.text
        assert {entry["label"] for entry in answer.json()["results"][0]} == set(LABELS)
        attention = client.post("/attention", json={"inputs": POSITIVE[0], "model": "mood-small"})
        assert attention.status_code == 200, attention.text
        explained = client.post("/explain", json={"inputs": POSITIVE[0], "model": "mood-small"})
        assert explained.status_code == 200, explained.text
        assert explained.json()["words"] and explained.json()["model"] == "mood-small"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--keep-layers", "0,7"], "--keep-layers"),
        (["--keep-layers", "0,1,2,3"], "nothing to compress"),
        (["--data", "/nonexistent/texts.txt"], "no such file"),
        (["--from", "nowhere"], "--from nowhere"),
        (["--temperature", "0"], "--temperature"),
        (["--method", "prune"], "--method"),
        (["--intermediate-size", "64"], "--intermediate-size: between 1 and 63"),
        (["--intermediate-size", "0"], "--intermediate-size must be >= 1"),
        (["--name", "mood"], "already exists"),
        (["--name", "../escape"], "name"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    workspace: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    models = workspace["models"]
    before = sorted(p.name for p in models.iterdir())
    assert run_compress(workspace, *extra, name="bad-student") == 2  # a later --name wins
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert error.startswith("encoder-serve compress: ")
    assert sorted(p.name for p in models.iterdir()) == before


def test_the_student_delta_rebuilds_the_same_model(
    workspace: dict[str, Path], student: Path
) -> None:
    clone = workspace["root"] / "clone"
    for name in ("mood", "mood-small"):  # what a fresh clone holds: manifest and delta
        (clone / name).mkdir(parents=True)
        shutil.copy2(workspace["models"] / name / "model.json", clone / name / "model.json")
        shutil.copytree(workspace["models"] / name / DELTA_DIR, clone / name / DELTA_DIR)
    assert run_cli("rebuild", "--models-dir", str(clone), "mood-small") == 0
    rebuilt = ModelManifest.read(clone / "mood-small")
    assert rebuilt.num_layers == 2
    assert rebuilt.evaluation == ModelManifest.read(student).evaluation

    np.testing.assert_allclose(
        served_logits(clone / "mood-small"), served_logits(student), atol=1e-5
    )


def served_logits(directory: Path) -> np.ndarray:
    """A model directory's fp32 graph's logits on the reference sentences."""
    found = ModelManifest.read(directory)
    pipeline = open_pipeline(directory, found, "fp32", threads=1, device="cpu")
    return pipeline.embed(REFERENCE_TEXTS, normalized=False)


@pytest.mark.parametrize("narrower", [False, True])
def test_a_full_student_ships_as_a_5_level_delta_and_rebuilds(
    workspace: dict[str, Path], narrower: bool
) -> None:
    """Trained in full, a student of a delta-shipped teacher ships its change of weights
    (the vocabulary frozen, so absent); `rebuild` gives the model that was exported, with
    its feed-forward blocks narrowed as they were trained."""
    from safetensors import safe_open

    name = "mood-narrow" if narrower else "mood-full"
    extra = ["--intermediate-size", "40"] if narrower else []
    assert run_compress(workspace, "--method", "full", *extra, name=name) == 0
    student = workspace["models"] / name
    files = sorted(p.name for p in (student / DELTA_DIR).iterdir())
    assert files == ["delta.json", DENSE_DELTA_FILE]
    with safe_open(str(student / DELTA_DIR / DENSE_DELTA_FILE), "pt") as weights:
        names = list(weights.keys())
    assert not [name for name in names if "word_embeddings" in name], names
    assert "bert.encoder.layer.1.output.dense.weight" in names  # layer 2 of the teacher
    assert "classifier.weight" in names and "classifier.weight.scale" in names
    record = read_record(student / DELTA_DIR)
    neurons = record["student"].pop("feed_forward_neurons", None)
    assert record["student"] == {"teacher": "mood", "keep_layers": [0, 2]}
    assert "5-level delta" in record["source"]
    assert (neurons is not None) == narrower
    if narrower:
        assert [len(kept) for kept in neurons] == [40, 40]
        assert "40 feed-forward neurons" in record["source"]
    clone = workspace["root"] / f"clone-{name}"
    for model in ("mood", name):
        (clone / model).mkdir(parents=True)
        shutil.copy2(workspace["models"] / model / "model.json", clone / model / "model.json")
        shutil.copytree(workspace["models"] / model / DELTA_DIR, clone / model / DELTA_DIR)
    assert run_cli("rebuild", "--models-dir", str(clone), name) == 0
    config = json.loads((clone / name / "torch" / "config.json").read_text())
    assert config["intermediate_size"] == (40 if narrower else 64)
    np.testing.assert_allclose(served_logits(clone / name), served_logits(student), atol=1e-5)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        ({"keep_layers": [0, "2"]}, "student.keep_layers must list layer numbers"),
        ({"feed_forward_neurons": [[0, 1.5], [0, 1]]}, "student.feed_forward_neurons must"),
        ({"feed_forward_neurons": [[0, 1]]}, "one list per block (2)"),
        ({"feed_forward_neurons": [[1, 0], [0, 1]]}, "distinct, increasing, below 64"),
        ({"feed_forward_neurons": [[0, 64], [0, 1]]}, "distinct, increasing, below 64"),
    ],
)
def test_a_malformed_student_record_stops_rebuild_with_one_line(
    workspace: dict[str, Path],
    student: Path,
    capsys: pytest.CaptureFixture[str],
    wrong: dict[str, object],
    message: str,
) -> None:
    """A hand-edited delta.json that names the student's shape wrongly is bad input."""
    models = workspace["root"] / "malformed"
    shutil.rmtree(models, ignore_errors=True)
    for name in ("mood", "mood-small"):
        (models / name).mkdir(parents=True)
        shutil.copy2(student.parent / name / "model.json", models / name / "model.json")
        shutil.copytree(student.parent / name / DELTA_DIR, models / name / DELTA_DIR)
    record_file = models / "mood-small" / DELTA_DIR / "delta.json"
    record = json.loads(record_file.read_text())
    record["student"] |= wrong
    record_file.write_text(json.dumps(record))
    capsys.readouterr()
    assert run_cli("rebuild", "--models-dir", str(models), "mood-small") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "merging" in lines[0] and lines[0].endswith("into mood (cut to the student's layers)")
    error = lines[-1]  # after rebuild's progress line
    assert error.startswith("encoder-serve rebuild: mood-small: ") and message in error, error
    assert not (models / "mood-small" / "model.onnx").exists()


def test_the_5_level_delta_stores_each_change_within_half_a_step() -> None:
    torch.manual_seed(0)
    start = torch.nn.Linear(7, 4)  # 7 columns: the last byte of a row holds one number
    before = starting_point(start)
    with torch.no_grad():
        start.weight += 0.01 * torch.randn(4, 7)
        start.weight[3] = before["weight"][3]  # a row that did not move
        start.bias += 0.001
    stored = quantized_delta(start, before)
    assert stored["weight"].dtype == torch.uint8 and stored["weight"].shape == (4, 3)
    path = Path(tempfile.mkdtemp()) / DENSE_DELTA_FILE
    save_file(stored, str(path), metadata=FORMAT)
    rebuilt = torch.nn.Linear(7, 4)
    rebuilt.load_state_dict(before)
    apply_dense_delta(rebuilt, path)
    change = start.weight - before["weight"]
    step = stored["weight.scale"].float()
    unclipped = change.abs() <= LEVELS * step
    error = (rebuilt.weight - start.weight).abs()
    assert unclipped.float().mean() > 0.8  # CLIP leaves most of a row unclipped
    assert torch.all(error[unclipped] <= (step / 2 + 1e-7).expand_as(error)[unclipped])
    assert torch.equal(rebuilt.weight[3], before["weight"][3])
    assert torch.allclose(rebuilt.bias, start.bias, atol=1e-6)
    assert len(torch.unique(rebuilt.weight[0] - before["weight"][0])) <= 2 * LEVELS + 1
    save_file(stored, str(path), metadata={"levels": "7"})
    with pytest.raises(ValueError, match="this version reads"):
        apply_dense_delta(rebuilt, path)


def test_a_student_trained_as_stored_is_rebuilt_exactly_and_still_learns() -> None:
    """The forward pass sees the stored form of each change; gradients pass the rounding
    to the latent weights; the delta saved after training rebuilds that very model."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    before = starting_point(model)
    train_as_stored(model, before)
    inputs, truth = torch.randn(64, 6), torch.randint(0, 2, (64,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(inputs), truth)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    seen = model[0].weight - before["0.weight"]  # what the forward pass uses
    assert len(torch.unique(seen[0].round(decimals=6))) <= 2 * LEVELS + 1
    path = save_dense_delta(model, before, Path(tempfile.mkdtemp()))
    rebuilt = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    rebuilt.load_state_dict(before)
    apply_dense_delta(rebuilt, path)
    torch.testing.assert_close(rebuilt[0].weight, model[0].weight.detach(), atol=1e-6, rtol=0)
    with torch.no_grad():  # within the fp16 the biases' changes are stored in
        torch.testing.assert_close(rebuilt(inputs), model(inputs), atol=1e-4, rtol=0)


def test_an_embedding_student_learns_the_teachers_vectors(workspace: dict[str, Path]) -> None:
    models = workspace["root"] / "embedding"
    models.mkdir()
    export_model(str(build_tiny_bert4(workspace["root"] / "tiny-embedder")), "tiny", models)
    texts = workspace["root"] / "texts.txt"
    texts.write_text("\n".join(POSITIVE + NEGATIVE) + "\n")
    argv = ["compress", "--from", "tiny", "--name", "tiny-small", "--data", str(texts)]
    argv += ["--models-dir", str(models), "--learning-rate", "1e-3", "--max-steps", "2"]
    assert run_cli(*argv, "--batch-size", "8", "--validation", "0.2") == 0
    manifest = ModelManifest.read(models / "tiny-small")
    assert manifest.task == "embedding" and manifest.num_layers == 2
    evaluation = manifest.evaluation
    assert evaluation["method"] == "distillation (full)" and evaluation["labelled"] is False
    # --max-steps 2 of 8 reach 16 of the 32 training texts: the teacher ran on those alone.
    assert evaluation["train_examples"] == 16 and evaluation["training"]["steps"] == 2
    history = [entry["validation"] for entry in evaluation["training"]["history"]]
    cosine = evaluation["validation"]["mean_cosine_to_teacher"]
    assert -1.0 <= cosine <= 1.0 and cosine == pytest.approx(max(history), abs=1e-3)
    neighbours = evaluation["validation"]["teachers_neighbours"]
    assert neighbours["queries"] == 8 and 0.0 <= neighbours["r_at_1"] <= neighbours["r_at_10"]
    assert not (models / "tiny-small" / DELTA_DIR).exists()


def test_the_teachers_neighbours_are_found_by_the_teacher_and_lost_by_noise() -> None:
    generator = np.random.default_rng(0)
    teacher = generator.normal(size=(50, 16)).astype(np.float32)
    assert teachers_neighbours(teacher, teacher)["r_at_1"] == 1.0
    assert teachers_neighbours(3.0 * teacher, teacher)["mrr_at_10"] == 1.0  # scale-free
    shuffled = teachers_neighbours(generator.normal(size=(50, 16)), teacher)
    assert shuffled["queries"] == 50 and shuffled["r_at_1"] < 0.5


def test_ctrl_c_leaves_no_model_directory(
    workspace: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.export.compress.command as compress_module

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(compress_module, "export_classifier", interrupted)
    before = sorted(p.name for p in workspace["models"].iterdir())
    assert run_compress(workspace, "--epochs", "1", name="stopped") == 130
    assert sorted(p.name for p in workspace["models"].iterdir()) == before


def test_a_lora_student_retrains_its_layer_norms(student: Path) -> None:
    """The kept layers read other inputs than in the teacher: their norms are trained in full
    and shipped in the student's delta beside the adapters."""
    from safetensors import safe_open

    with safe_open(str(student / DELTA_DIR / "adapter_model.safetensors"), "pt") as weights:
        names = list(weights.keys())
    norms = [name for name in names if "LayerNorm" in name]
    assert any(".layer.1.output.LayerNorm" in name for name in norms), names
    assert any("lora_A" in name for name in names)


def test_the_compression_report_measures_teacher_and_students(
    workspace: dict[str, Path], student: Path
) -> None:
    from loadtest.compression import Judged, families, markdown, measure_family, no_int8

    found = families(workspace["models"])
    names = [member.name for member in found["mood"]]  # mood-full too, when its test ran
    assert names[0] == "mood" and "mood-small" in names
    assert [member.manifest.num_layers for member in found["mood"]] == [4] + [2] * (len(names) - 1)
    labels = np.asarray([1] * len(POSITIVE) + [0] * len(NEGATIVE))
    judged = Judged(Texts(POSITIVE + NEGATIVE, labels), "tiny moods, accuracy")
    rows = measure_family(found["mood"], judged, rounds=1)
    graphs = [(row["model"], row["precision"]) for row in rows]
    assert graphs[0] == ("mood", "fp32")
    assert ("mood-small", "fp32") in graphs
    assert rows[0]["x_teacher_fp32"] == 1.0
    widths = {row["model"]: row["feed_forward"] for row in rows}
    assert widths["mood"] == widths["mood-small"] == 64 and widths.get("mood-narrow", 40) == 40
    assert all(0.0 <= row["score"] <= 1.0 and row["sequences_per_s"] > 0 for row in rows)
    report = {
        "created": "now",
        "host": "here",
        "cpu": "cpu",
        "threads": 1,
        "rounds": 1,
        "texts_per_round": 256,
        "families": [
            {
                "teacher": "mood",
                "judged_on": judged.what,
                "rows": rows,
                "no_int8": {"mood-x": "int8 graph: mean cosine to fp32 0.94 < 0.99"},
            },
            {
                "teacher": "tiny",
                "judged_on": "texts, mean cosine to the teacher",
                "rows": [
                    {"model": "tiny-small", "layers": 2, "feed_forward": None, "score": 0.9}
                    | {"precision": "fp32"}
                    | {"neighbour_r_at_1": 0.75, "sequences_per_s": 9.0, "x_teacher_fp32": 1.8}
                ],
                "no_int8": {},
            },
        ],
        "left_out": ["minilm"],
    }
    text = markdown(report)
    assert "| mood-small | 2 × 64 | fp32 |" in text and "minilm: its data is not beside" in text
    assert "- mood-x: no int8 graph (int8 graph: mean cosine to fp32 0.94 < 0.99)." in text
    assert "| teacher's nearest neighbour found first |" in text
    assert "| tiny-small | 2 | fp32 | 0.9000 | 0.7500 | 9.0 | 1.80 |" in text
    assert set(no_int8(found["mood"])) == {
        member.name for member in found["mood"] if "int8" not in member.manifest.files
    }
