"""The hot path (app/api/hot_path.py) answers exactly as the framework alone, and the
OpenAPI document is the one from before it existed.

Two apps on the same real models: one with the hot path, one with `hot_path=False` (every
request through FastAPI). The same requests, valid and invalid, go to both; status, body
and headers must match (timing values and generated request ids aside). A spy on the hot
path's hand-over to the framework shows which requests took which way.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.app import create_app
from app.api.hot_path import HOT_BODY_BYTES, HOT_PATHS, HotPathMiddleware
from app.config import Settings
from tests.conftest import wait_ready

SNAPSHOT = Path(__file__).resolve().parent.parent / "data" / "openapi.json"
# Headers whose values differ from one request to the next.
VARYING = {"x-request-id", "x-queue-time", "x-inference-time", "x-total-time"}


def openapi_bytes(app: Any) -> bytes:
    return orjson.dumps(app.openapi(), option=orjson.OPT_INDENT_2)


def test_openapi_document_is_unchanged() -> None:
    """Byte for byte the document committed before the hot path (tests/data/openapi.json).
    A route or field added on purpose: regenerate it with
    `PYTHONPATH=. python -m tests.integration.test_hot_path` and commit the difference."""
    assert openapi_bytes(create_app(Settings())) == SNAPSHOT.read_bytes()
    assert openapi_bytes(create_app(Settings(), hot_path=False)) == SNAPSHOT.read_bytes()


class HandOverSpy:
    """Counts the requests the hot path hands to the framework."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


def hot_path_of(app: Any) -> HotPathMiddleware:
    layer = app.edge
    while not isinstance(layer, HotPathMiddleware):
        layer = layer.app
    return layer


def start(settings: Settings, hot_path: bool) -> TestClient:
    client = TestClient(create_app(settings, hot_path=hot_path))
    client.__enter__()
    wait_ready(client.get)
    return client


@pytest.fixture(scope="module")
def apps(default_models: Path) -> Iterator[tuple[TestClient, TestClient, HandOverSpy]]:
    settings = Settings(
        models_dir=default_models,
        models=["minilm", "sentiment"],
        max_inputs_per_request=8,
        max_input_chars=2000,
        model_aliases={"missing-alias": "not-served"},
    )
    hot, plain = start(settings, True), start(settings, False)
    layer = hot_path_of(hot.app)
    spy = layer.app = HandOverSpy(layer.app)
    try:
        yield hot, plain, spy
    finally:
        hot.__exit__(None, None, None)
        plain.__exit__(None, None, None)


def comparable(response: Any) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted(
        (name, "…" if name in VARYING else value) for name, value in response.headers.items()
    )
    return response.status_code, response.content, headers


VALID: list[tuple[str, Any]] = [
    ("/encode", {"inputs": "The cat sits on the mat."}),
    ("/encode", {"inputs": ["One.", "Two texts."], "dimensions": 8, "normalize": False}),
    ("/encode", {"inputs": "x", "model": "minilm", "truncate": True}),
    ("/v1/embeddings", {"input": "The cat sits on the mat.", "model": "minilm"}),
    ("/v1/embeddings", {"input": ["a", "b"], "model": "text-embedding-3-small"}),
    ("/v1/embeddings", {"input": [101, 7592, 102], "model": "minilm", "encoding_format": "base64"}),
    ("/v1/embeddings", {"input": "x", "model": "minilm", "user": "u"}),
    ("/classify", {"inputs": "A wonderful film.", "model": "sentiment"}),
    ("/classify", {"inputs": ["Awful.", "Great."], "model": "sentiment", "top_k": 1}),
    ("/classify", {"inputs": "Stocks fell.", "candidate_labels": ["business", "sports"]}),
]
# Refused by validation or the body's parsing (handed over), or by the engine (answered on
# the hot path by the app's own error handlers).
INVALID: list[tuple[str, Any]] = [
    ("/encode", {"inputs": []}),
    ("/encode", {"inputs": ""}),
    ("/encode", {"inputs": ["fine", 3]}),
    ("/encode", {}),
    ("/encode", {"inputs": "x", "dimensions": 0}),
    ("/encode", {"inputs": "x", "unknown_field": 1}),
    ("/encode", {"inputs": ["x"] * 9}),
    ("/encode", {"inputs": "x" * 2001}),
    ("/encode", [1, 2]),
    ("/encode", "just a string"),
    ("/encode", {"inputs": "x", "model": "nope"}),
    ("/encode", {"inputs": "x", "model": "sentiment"}),
    ("/encode", {"inputs": "x", "dimensions": 100000}),
    ("/encode", {"inputs": "word " * 600, "truncate": False}),
    ("/v1/embeddings", {"input": []}),
    ("/v1/embeddings", {"input": 3, "model": "minilm"}),
    ("/v1/embeddings", {"input": [True, False], "model": "minilm"}),
    ("/v1/embeddings", {"input": "x", "model": "minilm", "dimensions": "8"}),
    ("/v1/embeddings", {"input": "x", "model": "missing-alias"}),
    ("/v1/embeddings", {"input": "x", "model": "minilm", "encoding_format": "hex"}),
    ("/classify", {"inputs": "x", "model": "minilm"}),
    ("/classify", {"inputs": "x", "top_k": 0, "model": "sentiment"}),
    ("/classify", {"inputs": "x", "candidate_labels": ["a", "a"]}),
    ("/classify", {"inputs": "x", "candidate_labels": ["a"], "hypothesis_template": "{0}"}),
]
RAW: list[tuple[str, bytes, dict[str, str]]] = [
    ("/encode", b'{"inputs": "x"', {"content-type": "application/json"}),
    ("/encode", b"\xff\xfe", {"content-type": "application/json"}),
    ("/encode", b'{"inputs": "\\ud800"}', {"content-type": "application/json"}),
    ("/encode", b'{"inputs": "x"}', {"content-type": "text/plain"}),
    ("/encode", b'{"inputs": "x"}', {}),
    ("/encode", b"", {"content-type": "application/json"}),
    ("/v1/embeddings", b'{"input": NaN, "model": "minilm"}', {"content-type": "application/json"}),
    (
        "/classify",
        b'{"inputs": "x", "model": "sentiment"}',
        {"content-type": "application/merge-patch+json"},
    ),
]


@pytest.mark.parametrize(("path", "body"), VALID)
def test_valid_requests_take_the_hot_path_and_answer_the_same(
    apps: tuple[TestClient, TestClient, HandOverSpy], path: str, body: Any
) -> None:
    hot, plain, spy = apps
    spy.paths.clear()
    fast, slow = hot.post(path, json=body), plain.post(path, json=body)
    assert fast.status_code == 200, fast.text
    assert comparable(fast) == comparable(slow)
    assert set(fast.headers) >= VARYING
    assert spy.paths == []  # answered without the framework


@pytest.mark.parametrize(("path", "body"), INVALID)
def test_invalid_requests_answer_the_same(
    apps: tuple[TestClient, TestClient, HandOverSpy], path: str, body: Any
) -> None:
    hot, plain, _ = apps
    fast, slow = hot.post(path, json=body), plain.post(path, json=body)
    assert 400 <= fast.status_code < 500, fast.text
    assert comparable(fast) == comparable(slow)


@pytest.mark.parametrize(("path", "content", "headers"), RAW)
def test_malformed_bodies_answer_the_same(
    apps: tuple[TestClient, TestClient, HandOverSpy],
    path: str,
    content: bytes,
    headers: dict[str, str],
) -> None:
    hot, plain, spy = apps
    spy.paths.clear()
    fast = hot.post(path, content=content, headers=headers)
    slow = plain.post(path, content=content, headers=headers)
    assert comparable(fast) == comparable(slow)
    if fast.status_code != 200:
        assert spy.paths == [path]  # the framework worded the refusal


def test_validation_refusals_are_handed_to_the_framework(
    apps: tuple[TestClient, TestClient, HandOverSpy],
) -> None:
    hot, _, spy = apps
    spy.paths.clear()
    assert hot.post("/encode", json={"inputs": []}).status_code == 422
    assert hot.post("/encode", json={"inputs": "x", "model": "nope"}).status_code == 404
    # Validation failed: handed over; an unknown model is the engine's: answered on the hot path.
    assert spy.paths == ["/encode"]


def test_a_large_body_goes_to_the_framework_unparsed(
    apps: tuple[TestClient, TestClient, HandOverSpy],
) -> None:
    # Past HOT_BODY_BYTES the framework parses the body, once, valid or not (here a valid
    # body made large by JSON whitespace, within the fixture's small input limits).
    hot, plain, spy = apps
    content = b'{"inputs": ["a text", "another"]' + b" " * HOT_BODY_BYTES + b"}"
    headers = {"content-type": "application/json"}
    spy.paths.clear()
    fast = hot.post("/encode", content=content, headers=headers)
    slow = plain.post("/encode", content=content, headers=headers)
    assert fast.status_code == 200, fast.text
    assert comparable(fast) == comparable(slow)
    assert spy.paths == ["/encode"]


def test_request_ids_metrics_and_the_model_label(
    apps: tuple[TestClient, TestClient, HandOverSpy],
) -> None:
    hot, _, _ = apps
    echoed = hot.post("/encode", json={"inputs": "x"}, headers={"x-request-id": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    hot.post("/classify", json={"inputs": "x", "model": "sentiment"})
    assert hot.post("/v1/embeddings", json={"input": ["x"] * 9, "model": "m"}).status_code == 413
    exposition = hot.get("/metrics").text
    assert 'encoder_requests_total{code="413",endpoint="/v1/embeddings",model=""}' in exposition
    assert 'encoder_requests_total{code="200",endpoint="/encode",model="minilm"}' in exposition
    assert 'encoder_requests_total{code="200",endpoint="/classify",model="sentiment"}' in exposition


def test_every_hot_path_is_served(apps: tuple[TestClient, TestClient, HandOverSpy]) -> None:
    hot, _, _ = apps
    assert set(hot_path_of(hot.app).routes) == HOT_PATHS


@pytest.mark.parametrize("hot_path", [True, False])
def test_api_key_on_the_hot_routes(default_models: Path, hot_path: bool) -> None:
    settings = Settings(models_dir=default_models, models=["minilm"], api_key=["secret-key"])
    client = start(settings, hot_path)
    try:
        refused = client.post("/encode", json={"inputs": "x"})
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "unauthorized"
        allowed = client.post(
            "/encode", json={"inputs": "x"}, headers={"authorization": "Bearer secret-key"}
        )
        assert allowed.status_code == 200
    finally:
        client.__exit__(None, None, None)


if __name__ == "__main__":
    # Regenerates the snapshot (after a deliberate change of routes or fields).
    SNAPSHOT.write_bytes(openapi_bytes(create_app(Settings())))
    sys.exit(0)
