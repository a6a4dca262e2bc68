"""Bad input gets a 4xx in the contract's JSON error shape, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.config import Settings
from tests.conftest import wait_ready


@pytest.fixture(scope="module")
def client(default_models: Path) -> Iterator[TestClient]:
    app = create_app(Settings(models_dir=default_models, max_inputs_per_request=8))
    with TestClient(app) as client:
        wait_ready(client.get)
        yield client


def assert_error(response, status: int, kind: str | None = None) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"type", "message"} and error["message"]
    if kind is not None:
        assert error["type"] == kind
    return str(error["message"])


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"inputs": []}, "empty list"),
        ({"inputs": ""}, "empty string"),
        ({"inputs": ["fine", ""]}, "item 1 is an empty string"),
        ({"inputs": ["fine", 3]}, "item 1 must be a string"),
        ({"inputs": 42}, "must be a string or a list"),
        ({"inputs": None}, "must be a string or a list"),
        ({}, "inputs"),
        ({"inputs": "x", "dimensions": 0}, "dimensions"),
        ({"inputs": "x", "normalize": "maybe"}, "normalize"),
        ({"inputs": "x", "unknown_field": 1}, "unknown_field"),
    ],
)
def test_invalid_fields_are_422(client: TestClient, body: dict, needle: str) -> None:
    message = assert_error(client.post("/encode", json=body), 422)
    assert needle in message


def test_dimensions_above_the_model_are_422(client: TestClient) -> None:
    message = assert_error(client.post("/encode", json={"inputs": "x", "dimensions": 385}), 422)
    assert "between 1 and 384" in message


def test_too_long_without_truncation_is_422(client: TestClient) -> None:
    body = {"inputs": ["short", "word " * 400], "truncate": False}
    message = assert_error(client.post("/encode", json=body), 422, "input_too_long")
    assert "inputs[1]" in message and "256" in message


def test_unknown_model_is_404(client: TestClient) -> None:
    message = assert_error(
        client.post("/encode", json={"inputs": "x", "model": "../../etc/passwd"}),
        404,
        "model_not_found",
    )
    assert "minilm" in message  # says what is loaded


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        "/encode",
        content=b'{"inputs": ["unterminated',
        headers={"content-type": "application/json"},
    )
    assert_error(response, 400, "malformed_json")


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"null"])
def test_json_that_is_not_an_object_is_4xx(client: TestClient, body: bytes) -> None:
    response = client.post("/encode", content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code)


def test_too_many_inputs_is_413(client: TestClient) -> None:
    message = assert_error(client.post("/encode", json={"inputs": ["x"] * 9}), 413)
    assert "limit is 8" in message


def test_unknown_route_and_wrong_method_use_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/encode"), 405, "method_not_allowed")


def test_server_keeps_serving_after_bad_input(client: TestClient) -> None:
    response = client.post("/encode", json={"inputs": "still fine"})
    assert response.status_code == 200
    assert len(response.json()["embeddings"][0]) == 384
