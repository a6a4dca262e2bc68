"""Error answers without a model: 415 for bodies that are not declared JSON, messages that
name their field once in a sentence, TEI's error shape and statuses on TEI's routes, the
`parameters` object of Hugging Face's clients, and ENCODER_MODEL_ALIASES.

The app is never started: validation answers before a route asks for the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.api import rerank, tei, tei_root
from app.api.app import create_app
from app.api.bodies import is_json
from app.api.errors import TEI_PATHS
from app.api.schemas import quoted
from app.api.tei import TeiEmbedRequest, TeiPredictRequest
from app.config import Settings
from tests.error_shapes import error_message


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    models = tmp_path_factory.mktemp("no-models")
    return TestClient(create_app(Settings(models_dir=Path(models), max_inputs_per_request=4)))


def answer(client: TestClient, path: str, body: Any, status: int) -> tuple[str, dict[str, Any]]:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    payload = response.json()
    return error_message(payload, path), payload


# -- 415 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}],
    ids=["none", "text", "form"],
)
@pytest.mark.parametrize("path", ["/encode", "/v1/embeddings", "/embed"])
def test_a_body_not_declared_json_is_a_415(
    client: TestClient, path: str, headers: dict[str, str]
) -> None:
    response = client.post(path, content=b'{"inputs": "x", "input": "x"}', headers=headers)
    assert response.status_code == 415, response.text
    message = error_message(response.json(), path)
    assert "Content-Type: application/json" in message
    sent = headers.get("content-type")
    assert (repr(sent) if sent else "none") in message
    if path == "/encode":
        assert response.json()["error"]["type"] == "unsupported_media_type"


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/x+json",
    ],
)
def test_json_content_types_are_read(client: TestClient, content_type: str) -> None:
    assert is_json(content_type)
    response = client.post(
        "/encode", content=b'{"inputs": []}', headers={"content-type": content_type}
    )
    assert response.status_code == 422  # read and validated, not refused unread


def test_routes_without_a_body_need_no_content_type(client: TestClient) -> None:
    assert client.get("/health").status_code == 200


# -- messages --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field", "expected"),
    [
        (
            "/encode",
            {"inputs": "x", "dimensions": 0},
            "dimensions",
            "dimensions must be at least 1",
        ),
        ("/encode", {}, "inputs", "inputs is required"),
        ("/encode", {"inputs": []}, "inputs", "inputs must not be an empty list"),
        ("/encode", {"inputs": ""}, "inputs", "inputs must not be an empty string"),
        ("/encode", {"inputs": "x", "typo": 1}, "typo", "typo is not a field of this request"),
        ("/encode", {"inputs": "x", "normalize": "maybe"}, "normalize", "normalize should be"),
        ("/encode", {"inputs": ["a", 3]}, "inputs", "inputs: item 1 must be a string, not int"),
        ("/classify", {"inputs": "x", "top_k": 0}, "top_k", "top_k should be greater than"),
        (
            "/classify",
            {"inputs": "x", "candidate_labels": ["a", "b", "a", "b", "c", "c"]},
            "candidate_labels",
            "candidate_labels must be distinct; 'a', 'b' and 'c' are repeated",
        ),
        (
            "/classify",
            {"inputs": "x", "candidate_labels": ["sports", "sports"]},
            "candidate_labels",
            "candidate_labels must be distinct; 'sports' is repeated",
        ),
        (
            "/classify",
            {"inputs": "x", "hypothesis_template": "no slot"},
            "hypothesis_template",
            "hypothesis_template must contain exactly one {} placeholder",
        ),
        ("/attention", {"inputs": ["a"]}, "inputs", "inputs must be one string"),
        ("/attention", {"inputs": "x", "layers": [0] * 2000}, "layers", "layers has 2000 indices"),
        ("/v1/embeddings", {"input": [], "model": "m"}, "input", "input must not be an empty list"),
        ("/v1/embeddings", {"input": [True], "model": "m"}, "input", "input must be a string"),
    ],
)
def test_messages_are_sentences_naming_their_field_once(
    client: TestClient, path: str, body: dict[str, Any], field: str, expected: str
) -> None:
    message, _ = answer(client, path, body, 422)
    assert message.startswith(expected), message
    assert message.count(field) == 1, message
    assert "['" not in message and "Value error" not in message and "Input should" not in message


def test_quoted_lists_read_as_text() -> None:
    assert quoted(["a"]) == "'a'"
    assert quoted(["a", "b", "c"]) == "'a', 'b' and 'c'"
    assert quoted([str(n) for n in range(8)]) == "'0', '1', '2', '3', '4' and 3 more"


# -- TEI's error shape and statuses ----------------------------------------------------------


def test_the_tei_paths_are_the_tei_routes() -> None:
    # TEI's /rerank lives with /v1/rerank in app/api/rerank.py.
    routes = [*tei.router.routes, *tei_root.router.routes, *rerank.router.routes]
    paths = {route.path for route in routes}  # type: ignore[attr-defined]
    assert {path for path in paths if not path.startswith("/v1/")} == TEI_PATHS


@pytest.mark.parametrize(
    ("path", "body", "status", "error_type"),
    [
        ("/embed", {"inputs": []}, 400, "empty"),
        ("/embed_all", {"inputs": []}, 400, "empty"),
        ("/predict", {"inputs": []}, 400, "empty"),
        ("/decode", {"ids": []}, 400, "empty"),
        ("/decode", {"ids": [[1], []]}, 400, "empty"),
        ("/embed", {"inputs": ["x"] * 5}, 413, "validation"),
        ("/predict", {"inputs": [["a", "b"]] * 5}, 413, "validation"),
        ("/decode", {"ids": [[1]] * 5}, 413, "validation"),
        ("/embed", {"inputs": 3}, 422, "validation"),
        ("/embed", {"inputs": "x", "dimensions": 0}, 422, "validation"),
        ("/predict", {"inputs": [["a", "b", "c"]]}, 422, "validation"),
        ("/predict", {"inputs": [["a", ""]]}, 422, "validation"),
        ("/predict", {"inputs": [[]]}, 422, "validation"),
        ("/decode", {"ids": [-1]}, 422, "validation"),
        ("/decode", {"ids": [True]}, 422, "validation"),
        ("/decode", {"ids": [[1], 2]}, 422, "validation"),
        ("/decode", {}, 422, "validation"),
    ],
)
def test_tei_routes_answer_in_tei_shape(
    client: TestClient, path: str, body: dict[str, Any], status: int, error_type: str
) -> None:
    _, payload = answer(client, path, body, status)
    assert payload["error_type"] == error_type


def test_tei_malformed_json_is_a_400_in_tei_shape(client: TestClient) -> None:
    response = client.post("/embed", content=b"{", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {
        "error": "the request body is not valid JSON",
        "error_type": "validation",
    }


def test_hugging_face_parameters_count_as_fields_unless_sent_at_the_top() -> None:
    body = {"inputs": "x", "normalize": True, "parameters": {"normalize": False, "dimensions": 8}}
    request = TeiEmbedRequest.model_validate(body)
    assert (request.inputs, request.normalize, request.dimensions) == ("x", True, 8)
    nested_inputs = {"inputs": "x", "parameters": {"inputs": "y", "truncate": True}}
    request = TeiEmbedRequest.model_validate(nested_inputs)
    assert (request.inputs, request.truncate) == ("x", True)
    with pytest.raises(ValidationError):
        TeiEmbedRequest.model_validate({"inputs": "x", "parameters": {"dimensions": 0}})


def test_predict_inputs_are_texts_and_pairs() -> None:
    request = TeiPredictRequest.model_validate({"inputs": ["a", ["b"], ["c", "d"]]})
    assert request.texts() == ["a", "b", ("c", "d")]
    assert TeiPredictRequest.model_validate({"inputs": "a"}).texts() == ["a"]


# -- ENCODER_MODEL_ALIASES -------------------------------------------------------------------


def test_model_aliases_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCODER_MODEL_ALIASES", " text-embedding-3-small = minilm ,ada=tiny,")
    assert Settings().model_aliases == {"text-embedding-3-small": "minilm", "ada": "tiny"}
    monkeypatch.setenv("ENCODER_MODEL_ALIASES", "")
    assert Settings().model_aliases == {}


@pytest.mark.parametrize(
    ("value", "needle"),
    [("minilm", "is not NAME=MODEL"), ("a=", "is not NAME=MODEL"), ("a=b,a=c", "names 'a' twice")],
)
def test_bad_model_aliases_are_refused(
    monkeypatch: pytest.MonkeyPatch, value: str, needle: str
) -> None:
    monkeypatch.setenv("ENCODER_MODEL_ALIASES", value)
    with pytest.raises(ValidationError, match=needle):
        Settings()


# -- dimensions are integers -----------------------------------------------------------------


@pytest.mark.parametrize("dimensions", [8.0, "8", True, 8.5, [8]])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"input": "x", "model": "m"}),
        ("/encode", {"inputs": "x"}),
        ("/embed", {"inputs": "x"}),
    ],
)
def test_dimensions_must_be_an_integer(
    client: TestClient, path: str, body: dict[str, Any], dimensions: Any
) -> None:
    """8.0, "8" and true are not a number of dimensions: 422 in the route's error shape
    (OpenAI's under /v1/), never coerced to 8 or 1."""
    message, payload = answer(client, path, {**body, "dimensions": dimensions}, 422)
    assert "dimensions" in message
    if path.startswith("/v1/"):
        assert payload["error"]["type"] == "invalid_request_error"
