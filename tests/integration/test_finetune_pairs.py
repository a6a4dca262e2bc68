"""`encoder-serve finetune --task rerank` and `--task embedding` end to end on a tiny encoder:
the loss falls, the held-out retrieval figures are recorded, the written directory serves
/rerank and /v1/rerank (best first) or /encode and /v1/embeddings, the embedding delta
rebuilds, and bad input exits 2 with one line and writes nothing."""

from __future__ import annotations

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
from app.export.delta import DELTA_DIR, read_record
from app.export.exporter import export_model
from tests.conftest import wait_ready
from tests.tiny_models import build_tiny_bert

WORDS = [
    "apple",
    "river",
    "castle",
    "engine",
    "garden",
    "harbor",
    "island",
    "jungle",
    "kettle",
    "ladder",
    "mirror",
    "needle",
    "orange",
    "pencil",
    "rocket",
    "saddle",
    "tunnel",
    "violin",
    "wallet",
    "yogurt",
    "anchor",
    "bridge",
    "candle",
    "dragon",
]
# A random tiny miner finds every text alike (cosines near 1): the near-duplicate rule
# would skip every candidate, so the tests raise its threshold.
TRAINING = ["--epochs", "6", "--learning-rate", "3e-3", "--patience", "100"]
TRAINING += ["--validation", "0.25", "--batch-size", "6", "--near-duplicate", "0.99999"]


def query(word: str) -> str:
    return f"what happened to the {word}"


def document(word: str) -> str:
    return f"the {word} was seen near the old {word} house today"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune-pairs")
    base = build_tiny_bert(root / "tiny-source")
    data = root / "pairs.csv"
    data.write_text("query,positive\n" + "".join(f"{query(w)},{document(w)}\n" for w in WORDS))
    miner_repository = root / "miner"
    miner_repository.mkdir()
    export_model(str(base), "tiny", miner_repository)
    return {"root": root, "base": base, "data": data, "miner": miner_repository / "tiny"}


def repository(workspace: dict[str, Path], name: str) -> Path:
    models = workspace["root"] / name
    models.mkdir()
    return models


def run_finetune(workspace: dict[str, Path], models: Path, task: str, *extra: str) -> int:
    argv = ["finetune", "--task", task, "--data", str(workspace["data"]), "--name", "tuned"]
    argv += ["--models-dir", str(models), "--base", str(workspace["base"])]
    argv += ["--miner", str(workspace["miner"]), *TRAINING, *extra]
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


def served(models: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(models_dir=models))) as client:
        wait_ready(client.get)
        yield client


def check_training(manifest: ModelManifest, task: str, method: str) -> None:
    evaluation = manifest.evaluation
    assert (evaluation["task"], evaluation["method"], evaluation["seed"]) == (task, method, 0)
    assert evaluation["command"].startswith(f"encoder-serve finetune --task {task} ")
    for figures in (evaluation["validation"], evaluation["miner_validation"]):
        assert figures["queries"] == 6
        assert 0 <= figures["r_at_1"] <= figures["mrr_at_10"] <= figures["r_at_10"] <= 1
    assert evaluation["mining"]["hard_negatives"] == 3
    training = evaluation["training"]
    assert training["loss_last_10_steps"] < training["loss_first_10_steps"]
    history = training["history"]
    assert history and {"step", "r_at_1", "r_at_10", "mrr_at_10"} <= set(history[0])


@pytest.fixture(scope="module")
def rerank_repository(workspace: dict[str, Path]) -> Path:
    models = repository(workspace, "rerank")
    assert run_finetune(workspace, models, "rerank") == 0
    return models


def test_rerank_writes_a_cross_encoder_with_a_delta(rerank_repository: Path) -> None:
    assert [p.name for p in rerank_repository.iterdir()] == ["tuned"]  # no scratch left
    manifest = ModelManifest.read(rerank_repository / "tuned")
    assert manifest.task == "rerank"
    check_training(manifest, "rerank", "lora")
    assert manifest.evaluation["validation_ranked"] == "the miner's top 20"
    record = read_record(rerank_repository / "tuned" / DELTA_DIR)
    assert record["task"] == "rerank" and record["evaluation"] == manifest.evaluation


def test_the_tuned_reranker_serves_both_routes_best_first(rerank_repository: Path) -> None:
    word = WORDS[0]
    texts = [document(WORDS[5]), document(word), document(WORDS[9])]
    for client in served(rerank_repository):
        answer = client.post("/rerank", json={"query": query(word), "texts": texts})
        assert answer.status_code == 200, answer.text
        scores = [entry["score"] for entry in answer.json()]
        assert scores == sorted(scores, reverse=True) and len(scores) == 3
        cohere = client.post(
            "/v1/rerank", json={"model": "tuned", "query": query(word), "documents": texts}
        )
        assert cohere.status_code == 200, cohere.text
        results = cohere.json()["results"]
        assert [r["index"] for r in results] == [entry["index"] for entry in answer.json()]


@pytest.fixture(scope="module")
def embedding_repository(workspace: dict[str, Path]) -> Path:
    models = repository(workspace, "embedding")
    assert run_finetune(workspace, models, "embedding") == 0
    return models


def test_embedding_writes_a_served_embedding_model(embedding_repository: Path) -> None:
    manifest = ModelManifest.read(embedding_repository / "tuned")
    assert manifest.task == "embedding" and manifest.pooling == "mean"
    check_training(manifest, "embedding", "lora")
    assert manifest.evaluation["validation_ranked"] == "all held-out positives"
    for client in served(embedding_repository):
        encoded = client.post("/encode", json={"inputs": [query("apple")], "model": "tuned"})
        assert encoded.status_code == 200, encoded.text
        openai = client.post("/v1/embeddings", json={"input": "apple", "model": "tuned"})
        assert openai.status_code == 200, openai.text
        vector = np.asarray(openai.json()["data"][0]["embedding"])
        assert vector.shape == (manifest.dimensions,)


def rebuilt_from_delta(workspace: dict[str, Path], tuned: Path, name: str) -> ModelManifest:
    """What a fresh clone holds of a tuned model (manifest and delta), rebuilt."""
    clone = repository(workspace, name)
    (clone / "tuned").mkdir()
    shutil.copy2(tuned / "tuned" / "model.json", clone / "tuned" / "model.json")
    shutil.copytree(tuned / "tuned" / DELTA_DIR, clone / "tuned" / DELTA_DIR)
    args = build_parser().parse_args(["rebuild", "--models-dir", str(clone)])
    assert args.handler(args) == 0
    rebuilt = ModelManifest.read(clone / "tuned")
    assert rebuilt.evaluation == ModelManifest.read(tuned / "tuned").evaluation
    return rebuilt


def test_the_deltas_rebuild_the_same_models(
    workspace: dict[str, Path], embedding_repository: Path, rerank_repository: Path
) -> None:
    assert rebuilt_from_delta(workspace, embedding_repository, "clone-e").task == "embedding"
    assert rebuilt_from_delta(workspace, rerank_repository, "clone-r").task == "rerank"


def test_the_seed_decides_the_result(
    workspace: dict[str, Path], embedding_repository: Path
) -> None:
    again = repository(workspace, "embedding-again")
    assert run_finetune(workspace, again, "embedding") == 0
    first, second = (
        read_record(models / "tuned" / DELTA_DIR) for models in (embedding_repository, again)
    )
    assert second["reference_logits"] == first["reference_logits"]
    first_history, second_history = (
        record["evaluation"]["training"]["history"] for record in (first, second)
    )
    assert second_history == first_history


def test_full_tuning_of_a_reranker(workspace: dict[str, Path]) -> None:
    models = repository(workspace, "rerank-full")
    assert run_finetune(workspace, models, "rerank", "--method", "full", "--max-steps", "4") == 0
    manifest = ModelManifest.read(models / "tuned")
    assert manifest.task == "rerank" and not (models / "tuned" / DELTA_DIR).exists()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("case", "extra", "needle"),
    [
        ("missing column", ["--positive-column", "answer"], "no column named answer"),
        ("empty file", [], "empty file"),
        ("classifier miner", [], "negatives are mined with an embedding model"),
        ("too few pairs", [], "too few pairs"),
        ("no labels", ["--task", "classification"], "--labels is required"),
        ("head method", ["--method", "head"], "--method head is for classification"),
        ("no negatives", ["--hard-negatives", "0"], "learns from negatives"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    workspace: dict[str, Path],
    rerank_repository: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    extra: list[str],
    needle: str,
) -> None:
    models = workspace["root"] / f"bad-{case.replace(' ', '-')}"
    models.mkdir()
    patched = dict(workspace)
    if case == "empty file":
        patched["data"] = write(models.parent / "empty.csv", "")
    elif case == "too few pairs":
        rows = "".join(f"{query(w)},{document(w)}\n" for w in WORDS[:3])
        patched["data"] = write(models.parent / "three.csv", "query,positive\n" + rows)
    elif case == "classifier miner":
        patched["miner"] = rerank_repository / "tuned"  # a reranker, not an embedding model
    assert run_finetune(patched, models, "rerank", *extra) == 2
    error = capsys.readouterr().err.strip()
    assert needle in error and len(error.splitlines()) == 1, error
    assert list(models.iterdir()) == []


def test_ctrl_c_leaves_no_model_directory(
    workspace: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.export.finetune.pairs_command as pairs_module

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pairs_module, "export_classifier", interrupted)
    models = repository(workspace, "interrupted")
    assert run_finetune(workspace, models, "embedding", "--max-steps", "1") == 130
    assert list(models.iterdir()) == []
