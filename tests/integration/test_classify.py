"""POST /classify: exported fine-tuned classifiers, the default sentiment model, zero-shot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.config import Settings
from app.engine.manifest import ModelManifest
from app.export.exporter import export_model
from tests.conftest import LiveServer, wait_ready
from tests.sst2 import dev_accuracy
from tests.tiny_models import build_tiny_classifier

LABELS = ["red", "green", "blue"]
TEXTS = ["hello world", "a somewhat longer sentence about colours", "blue"]


def ready_client(models_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(models_dir=models_dir))) as client:
        wait_ready(client.get)
        yield client


@pytest.fixture(scope="module")
def classifier_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source directory, repository with `colours` and the multi-label `tags` exported)."""
    root = tmp_path_factory.mktemp("classifiers")
    source = build_tiny_classifier(root / "colours-source", LABELS)
    tags = build_tiny_classifier(root / "tags-source", ["a", "b"], "multi_label_classification")
    repo = root / "repo"
    repo.mkdir()
    export_model(str(source), "colours", repo, task="classification")
    export_model(str(tags), "tags", repo, task="classification")
    return source, repo


@pytest.fixture(scope="module")
def client(classifier_repo: tuple[Path, Path]) -> Iterator[TestClient]:
    yield from ready_client(classifier_repo[1])


@pytest.fixture(scope="module")
def torch_logits(classifier_repo: tuple[Path, Path]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = classifier_repo[0]
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source).eval()
    with torch.inference_mode():
        return model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits.numpy()


def scores_by_label(result: list[dict]) -> dict[str, float]:
    return {entry["label"]: entry["score"] for entry in result}


def classify(client: TestClient, **body: object) -> dict:
    response = client.post("/classify", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_export_stores_labels_problem_type_and_logit_parity(
    classifier_repo: tuple[Path, Path],
) -> None:
    manifest = ModelManifest.read(classifier_repo[1] / "colours")
    assert manifest.task == "classification" and manifest.labels == LABELS
    assert manifest.parity["fp32"]["compared"] == "logits"
    assert manifest.parity["fp32"]["max_abs_diff"] <= 1e-4
    tags = ModelManifest.read(classifier_repo[1] / "tags")
    assert tags.problem_type == "multi_label_classification"


def test_raw_scores_are_the_pytorch_logits(client: TestClient, torch_logits: np.ndarray) -> None:
    body = classify(client, inputs=TEXTS, model="colours", raw_scores=True)
    assert body["model"] == "colours" and body["usage"]["tokens"] > 0
    for row, result in zip(torch_logits, body["results"], strict=True):
        served = scores_by_label(result)
        np.testing.assert_allclose([served[label] for label in LABELS], row, atol=1e-4)


def test_default_scores_are_a_softmax_sorted_highest_first(
    client: TestClient, torch_logits: np.ndarray
) -> None:
    body = classify(client, inputs=TEXTS, model="colours")
    for row, result in zip(torch_logits, body["results"], strict=True):
        scores = [entry["score"] for entry in result]
        assert scores == sorted(scores, reverse=True)
        expected = np.exp(row) / np.exp(row).sum()
        served = scores_by_label(result)
        np.testing.assert_allclose([served[label] for label in LABELS], expected, atol=1e-4)


def test_top_k_cuts_the_list(client: TestClient) -> None:
    full = classify(client, inputs=TEXTS, model="colours")["results"]
    cut = classify(client, inputs=TEXTS, model="colours", top_k=1)["results"]
    assert [len(result) for result in cut] == [1, 1, 1]
    assert [result[0] for result in cut] == [result[0] for result in full]
    assert len(classify(client, inputs="x", model="colours", top_k=10)["results"][0]) == 3


def test_multi_label_scores_each_label_with_a_sigmoid(
    client: TestClient, torch_logits: np.ndarray
) -> None:
    body = classify(client, inputs=TEXTS, model="colours", multi_label=True)
    for row, result in zip(torch_logits, body["results"], strict=True):
        served = scores_by_label(result)
        expected = 1 / (1 + np.exp(-row))
        np.testing.assert_allclose([served[label] for label in LABELS], expected, atol=1e-4)


def test_multi_label_problem_type_defaults_to_sigmoid(client: TestClient) -> None:
    raw = classify(client, inputs="x", model="tags", raw_scores=True)["results"][0]
    scored = classify(client, inputs="x", model="tags")["results"][0]
    logits = scores_by_label(raw)
    for entry in scored:
        assert entry["score"] == pytest.approx(1 / (1 + np.exp(-logits[entry["label"]])), abs=1e-5)


def test_two_unmarked_classifiers_have_no_default_and_the_answer_says_how_to_choose(
    client: TestClient,
) -> None:
    # Neither is marked "default" in its model.json, nor named by ENCODER_DEFAULT_MODELS:
    # no pick by name order (`colours` would come first).
    response = client.post("/classify", json={"inputs": "x"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "model_not_found"
    assert "(colours, tags) and none is the default" in error["message"]
    assert "ENCODER_DEFAULT_MODELS" in error["message"]


def test_the_default_classifier_is_the_one_the_setting_names(
    classifier_repo: tuple[Path, Path],
) -> None:
    app = create_app(Settings(models_dir=classifier_repo[1], default_models=["tags"]))
    with TestClient(app) as client:
        wait_ready(client.get)
        assert classify(client, inputs="x")["model"] == "tags"
        models = client.get("/models").json()["models"]
    assert [(m["name"], m["default"]) for m in models] == [("tags", True), ("colours", False)]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"inputs": "x", "model": "colours", "top_k": 0}, 422, "top_k"),
        ({"inputs": "x", "model": "colours", "candidate_labels": ["a", "b"]}, 422, "zero-shot"),
        ({"inputs": "x", "model": "nope"}, 404, "not loaded"),
        ({"inputs": []}, 422, "empty list"),
    ],
)
def test_classifier_bad_input(client: TestClient, body: dict, status: int, needle: str) -> None:
    response = client.post("/classify", json=body)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]["message"]


# -- the default models (real server) ---------------------------------------------------------

POSITIVE = [
    "An absolutely wonderful film, moving and beautifully acted.",
    "I loved every minute of it; a joyous, brilliant experience.",
    "One of the best movies of the year, a true delight.",
]
NEGATIVE = [
    "A dreadful, boring mess that wasted two hours of my life.",
    "The worst film I have seen in years: terrible acting and a stupid plot.",
    "Painfully dull and utterly pointless.",
]


def test_sentiment_classifies_unmistakable_sentences(server: LiveServer) -> None:
    with server.client() as client:
        response = client.post("/classify", json={"inputs": POSITIVE + NEGATIVE})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "sentiment"
    top = [result[0]["label"] for result in body["results"]]
    assert top == ["positive"] * 3 + ["negative"] * 3
    for result in body["results"]:
        assert sum(entry["score"] for entry in result) == pytest.approx(1, abs=1e-5)


def test_sentiment_dev_accuracy_regression_guard(server: LiveServer) -> None:
    accuracy = dev_accuracy(server.url)
    print(f"SST-2 dev accuracy through the server: {accuracy:.4f}")
    assert accuracy >= 0.80


TOPICS = {
    "sports": "The striker scored twice as the home team won the championship final.",
    "business": "Quarterly revenue rose 12 percent and the company raised its profit forecast.",
    "science": "Astronomers observed the light of a distant galaxy with the new space telescope.",
    "cooking": "Simmer the tomatoes with garlic and basil, then stir in the pasta.",
}


def test_zero_shot_puts_clear_sentences_on_their_topic(server: LiveServer) -> None:
    labels = list(TOPICS)
    with server.client() as client:
        response = client.post(
            "/classify", json={"inputs": list(TOPICS.values()), "candidate_labels": labels}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "minilm"
    assert [result[0]["label"] for result in body["results"]] == labels
    for result in body["results"]:
        assert {entry["label"] for entry in result} == set(labels)
        assert sum(entry["score"] for entry in result) == pytest.approx(1, abs=1e-5)


def test_zero_shot_raw_scores_are_cosines_and_template_matters(server: LiveServer) -> None:
    with server.client() as client:
        text = TOPICS["sports"]
        raw = client.post(
            "/classify", json={"inputs": text, "candidate_labels": ["sports"], "raw_scores": True}
        ).json()["results"][0][0]["score"]
        expected = client.post(
            "/encode", json={"inputs": [text, "This text is about sports."]}
        ).json()["embeddings"]
        templated = client.post(
            "/classify",
            json={
                "inputs": text,
                "candidate_labels": ["sports"],
                "raw_scores": True,
                "hypothesis_template": "{}",
            },
        ).json()["results"][0][0]["score"]
    assert raw == pytest.approx(float(np.dot(expected[0], expected[1])), abs=1e-5)
    assert templated != pytest.approx(raw, abs=1e-4)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"inputs": "x", "candidate_labels": []}, "must not be empty"),
        ({"inputs": "x", "candidate_labels": ["a", "b", "a"]}, "repeated"),
        ({"inputs": "x", "candidate_labels": ["a", " "]}, "empty"),
        ({"inputs": "x", "candidate_labels": [f"l{i}" for i in range(33)]}, "limit is 32"),
        ({"inputs": "x", "candidate_labels": ["a"], "hypothesis_template": "no slot"}, "{}"),
        ({"inputs": "x", "candidate_labels": ["a"], "hypothesis_template": "{0} {x}"}, "{}"),
        ({"inputs": "x", "model": "minilm"}, "candidate_labels"),
        ({"inputs": "x", "model": "sentiment", "candidate_labels": ["a", "b"]}, "zero-shot"),
        ({"inputs": "x", "top_k": 0}, "top_k"),
    ],
)
def test_zero_shot_and_task_mismatch_are_422(server: LiveServer, body: dict, needle: str) -> None:
    with server.client() as client:
        response = client.post("/classify", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert needle in error["message"], error


def test_classifiers_answer_attention_from_their_encoder_body(
    client: TestClient, classifier_repo: tuple[Path, Path]
) -> None:
    manifest = ModelManifest.read(classifier_repo[1] / "colours")
    assert manifest.files["attention"] == "attention.onnx"
    assert manifest.parity["attention"]["max_abs_diff"] <= 1e-4
    response = client.post(
        "/attention", json={"inputs": "hello world", "model": "colours", "aggregate": "none"}
    )
    assert response.status_code == 200, response.text
    maps = np.asarray(response.json()["attentions"])
    assert maps.shape == (2, 2, 4, 4)  # 2 layers, 2 heads, [CLS] hello world [SEP]
    np.testing.assert_allclose(maps.sum(axis=-1), 1.0, atol=1e-3)
