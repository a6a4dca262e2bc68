"""The compressed defaults through the server, as the full ones are checked
(test_default_classifiers.py): `sentiment-small` on SST-2 dev, `topic-small` on the held-out
fifth of the shared AG News file. Skipped when a student is not built or the data is not
beside the checkout."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.engine.manifest import ModelManifest
from app.export.compress.data import prepare_data
from app.export.delta import DELTA_DIR, read_record
from app.export.finetune import DataFormat
from tests.conftest import LIVE_MODELS_DIR, LiveServer, start_server
from tests.integration.test_default_classifiers import AGNEWS, TOPICS, classify
from tests.sst2 import dev_accuracy

STUDENTS = {"sentiment-small": "sentiment", "topic-small": "topic"}


def built(name: str) -> bool:
    return (LIVE_MODELS_DIR / name / "model.onnx").is_file()


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server of the students alone (links to the live repository's directories)."""
    present = [name for name in STUDENTS if built(name)]
    if not present:
        pytest.skip("no compressed default is built (make models)")
    repository = Path(tempfile.mkdtemp(prefix="encoder-serve-small-models-"))
    for name in present:
        (repository / name).symlink_to(LIVE_MODELS_DIR / name, target_is_directory=True)
    live = start_server(tmp_path_factory.mktemp("small"), {"ENCODER_MODELS_DIR": str(repository)})
    yield live
    live.stop()


def test_sentiment_small_reaches_its_sst2_dev_target(small_server: LiveServer) -> None:
    if not built("sentiment-small"):
        pytest.skip("sentiment-small is not built")
    accuracy = dev_accuracy(small_server.url, "sentiment-small")
    print(f"SST-2 dev accuracy of sentiment-small through the server: {accuracy:.4f}")
    assert accuracy >= 0.86


def test_topic_small_reaches_its_held_out_target(small_server: LiveServer) -> None:
    if not built("topic-small"):
        pytest.skip("topic-small is not built")
    if not AGNEWS.is_file():
        pytest.skip(f"AG News not found at {AGNEWS}; accuracy not measured")
    manifest = ModelManifest.read(LIVE_MODELS_DIR / "topic-small")
    settings = manifest.evaluation["hyperparameters"]
    held_out = prepare_data(
        AGNEWS,
        TOPICS,
        DataFormat(["title", "description"], "label", 1),
        validation_share=settings["validation"],
        seed=settings["seed"],
    ).validation
    assert held_out.labels is not None
    assert len(held_out.texts) == manifest.evaluation["validation"]["examples"]
    predicted = classify(small_server, held_out.texts, "topic-small")
    correct = sum(p == TOPICS[label] for p, label in zip(predicted, held_out.labels, strict=True))
    accuracy = correct / len(held_out.texts)
    print(f"AG News held-out accuracy of topic-small through the server: {accuracy:.4f}")
    assert accuracy >= 0.89


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_small_defaults_are_committed_as_small_deltas(name: str) -> None:
    delta = LIVE_MODELS_DIR / name / DELTA_DIR
    if not delta.is_dir():
        pytest.skip(f"{name} is not committed")
    assert built(name), f"{name} is committed but not built: make models rebuilds it"
    sizes = {path.name: path.stat().st_size for path in delta.iterdir()}
    assert max(sizes.values()) < 2 * 2**20, sizes  # the repository's limit on a committed file
    record = read_record(delta)
    assert record["student"]["teacher"] == STUDENTS[name]
    assert record["evaluation"] == ModelManifest.read(LIVE_MODELS_DIR / name).evaluation
    speedup = record["evaluation"]["speedup"]["ratio"]
    assert speedup > 1.0  # the measured figure recorded at training time, not timed here
