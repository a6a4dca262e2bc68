"""The default model of each task: ENCODER_DEFAULT_MODELS, then the `default` marker in
model.json, then the only model of the task; never the order of names."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast, get_args

import pytest
from pydantic import ValidationError

from app.config import TASKS, Settings
from app.engine.contract import Task
from app.engine.errors import ModelLoadError, ModelNotFound
from app.engine.manifest import ModelManifest, kept_default
from app.engine.models.registry import ModelRegistry, choose_defaults
from app.engine.models.served import ServedModel

SHIPPED = Path(__file__).resolve().parents[2] / "models"


def model(name: str, task: str, default: bool = False) -> ServedModel:
    manifest = SimpleNamespace(task=task, default=default)
    return cast(ServedModel, SimpleNamespace(name=name, task=task, manifest=manifest))


# A user's own classifier sorts before `sentiment`; `topic` is shipped unmarked.
REPOSITORY = [
    model("minilm", "embedding", default=True),
    model("myreviews", "classification"),
    model("sentiment", "classification", default=True),
    model("topic", "classification"),
]


def test_the_marked_models_are_the_defaults_whatever_their_names() -> None:
    assert choose_defaults(REPOSITORY, []) == {"embedding": "minilm", "classification": "sentiment"}
    registry = ModelRegistry(REPOSITORY, [])
    assert registry.get(None, "classification").name == "sentiment"
    assert registry.get(None, "embedding").name == "minilm"
    assert [m.name for m in registry] == ["minilm", "sentiment", "myreviews", "topic"]
    assert [registry.is_default(m) for m in REPOSITORY] == [True, False, True, False]


@pytest.mark.parametrize(
    "setting", [["classification=topic"], ["topic"], ["topic", "sentiment"], ["minilm", "topic"]]
)
def test_the_setting_wins_over_the_markers(setting: list[str]) -> None:
    chosen = choose_defaults(REPOSITORY, setting)
    assert chosen == {"embedding": "minilm", "classification": "topic"}


def test_a_task_entry_wins_over_a_bare_name_of_the_same_task() -> None:
    chosen = choose_defaults(REPOSITORY, ["sentiment", "classification=myreviews"])
    assert chosen["classification"] == "myreviews"


def test_the_only_model_of_a_task_is_its_default_unmarked() -> None:
    served = [model("tiny", "embedding"), model("myreviews", "classification")]
    assert choose_defaults(served, []) == {"embedding": "tiny", "classification": "myreviews"}


def test_several_unmarked_models_of_a_task_have_no_default_and_a_request_must_name_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    served = [model("zeta", "classification"), model("alpha", "classification")]
    registry = ModelRegistry(served, [])
    assert registry.defaults == {}
    with pytest.raises(ModelNotFound, match=r"\(alpha, zeta\) and none is the default"):
        registry.get(None, "classification")
    assert registry.get("zeta", "classification").name == "zeta"
    with pytest.raises(ModelNotFound, match="no loaded model serves the task 'embedding'"):
        registry.get(None, "embedding")
    assert "no default classification model among alpha, zeta" in caplog.text
    assert "ENCODER_DEFAULT_MODELS" in caplog.text


def test_two_marked_models_of_one_task_stop_the_start_unless_the_setting_decides() -> None:
    served = [model("a", "classification", True), model("b", "classification", True)]
    with pytest.raises(ModelLoadError, match=r"several classification models .* \(a, b\)"):
        choose_defaults(served, [])
    assert choose_defaults(served, ["classification=b"]) == {"classification": "b"}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (["nope"], "names 'nope', which is not served"),
        (["classification=nope"], "names 'nope', which is not served"),
        (["classification=minilm"], "'minilm' serves embedding, not classification"),
    ],
)
def test_a_setting_that_cannot_hold_stops_the_start(setting: list[str], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        choose_defaults(REPOSITORY, setting)


def test_the_setting_accepts_task_entries_and_bare_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCODER_DEFAULT_MODELS", " classification = sentiment , minilm ")
    assert Settings().default_models == ["classification=sentiment", "minilm"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("reranking=x", "the task must be embedding or classification"),
        ("classification=", "names no model"),
        ("classification=a,classification=b", "classification is given twice"),
    ],
)
def test_a_malformed_setting_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("ENCODER_DEFAULT_MODELS", value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_the_settings_tasks_are_the_engines() -> None:
    assert get_args(Task) == TASKS


def test_the_shipped_models_are_marked() -> None:
    marked = {
        name: ModelManifest.read(SHIPPED / name).default
        for name in ("minilm", "sentiment", "topic")
    }
    assert marked == {"minilm": True, "sentiment": True, "topic": False}


def manifest_data(**changes: Any) -> dict[str, Any]:
    data = json.loads((SHIPPED / "topic" / "model.json").read_text())
    return {**data, **changes}


@pytest.mark.parametrize(
    ("written", "kept"),
    [
        (manifest_data(default=True), True),
        (manifest_data(default=False), False),
        (manifest_data(), False),
    ],
)
def test_a_rebuild_keeps_the_marker_it_replaces(
    tmp_path: Path, written: dict[str, Any], kept: bool
) -> None:
    (tmp_path / "model.json").write_text(json.dumps(written))
    assert kept_default(tmp_path) is kept


def test_a_new_model_or_an_unreadable_manifest_is_not_marked(tmp_path: Path) -> None:
    assert kept_default(tmp_path / "absent") is False
    (tmp_path / "model.json").write_text("{not json")
    assert kept_default(tmp_path) is False
    manifest = ModelManifest.model_validate(manifest_data(default=True))
    manifest.write(tmp_path)
    assert kept_default(tmp_path) is True
    assert json.loads((tmp_path / "model.json").read_text())["default"] is True
