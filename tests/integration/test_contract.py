"""Every answer matches the OpenAPI document the server publishes.

Routes write their JSON with orjson (fast, no pydantic on the hot path), so nothing at run
time holds a body to its declared schema: these tests do, on the live server. A targeted
valid request per operation checks success bodies (fuzzed requests are mostly refused);
the fuzz test (test_fuzz.py) checks its schema-valid cases against the document too, and
here schemathesis' schema-violating cases check that every refusal is documented.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.api.app import create_app
from app.config import Settings
from tests.conftest import LiveServer

SCHEMA = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
CHECKS = [response_schema_conformance, status_code_conformance, content_type_conformance]
CASES_PER_ROUTE = 25
# Fuzzing a live server: no per-case deadline, the same cases every run (a failure here
# is reproducible), no example database between runs.
FUZZ_SETTINGS = settings(
    deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)
TEXT = "The viewer shows attention maps, and they are worth having."

# A valid request per operation that must succeed: (method, path, JSON body or None).
SUCCESSES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/encode", {"inputs": [TEXT, "short"], "dimensions": 64}),
    ("POST", "/encode", {"inputs": TEXT, "normalize": False}),
    ("POST", "/classify", {"inputs": [TEXT, "I hated it."], "top_k": 1}),
    ("POST", "/classify", {"inputs": TEXT, "candidate_labels": ["art", "sport"]}),
    ("POST", "/attention", {"inputs": TEXT, "aggregate": "none", "layers": [0], "heads": [1]}),
    ("POST", "/attention", {"inputs": TEXT, "aggregate": "mean"}),
    ("POST", "/attention", {"inputs": TEXT, "aggregate": "rollout"}),
    ("POST", "/tokenize", {"inputs": [TEXT, "word " * 400]}),
    ("POST", "/explain", {"inputs": TEXT, "method": "shap", "samples": 32, "target": "negative"}),
    ("POST", "/explain", {"inputs": TEXT, "candidate_labels": ["art", "sport"]}),
    ("GET", "/models", None),
    ("GET", "/health", None),
    ("GET", "/ready", None),
    ("GET", "/metrics", None),
    ("POST", "/v1/embeddings", {"input": [TEXT], "model": "minilm"}),
    ("POST", "/v1/embeddings", {"input": [[101, 7592, 102]], "model": "minilm"}),
    ("POST", "/v1/embeddings", {"input": TEXT, "model": "minilm", "encoding_format": "base64"}),
    ("GET", "/v1/models", None),
    ("POST", "/embed", {"inputs": [TEXT]}),
    ("POST", "/predict", {"inputs": TEXT}),
    ("POST", "/predict", {"inputs": [TEXT, "Awful."]}),
    ("POST", "/predict", {"inputs": [[TEXT, "They are."], ["Awful."]]}),
    ("POST", "/embed_all", {"inputs": [TEXT, "short"]}),
    ("POST", "/decode", {"ids": [[101, 7592, 102], [101, 102]], "skip_special_tokens": False}),
    ("GET", "/info", None),
    # TEI's request fields, TEI's task routes, infinity's shapes (#31).
    ("POST", "/encode", {"inputs": TEXT, "prompt": "query: ", "truncation_direction": "left"}),
    ("POST", "/tokenize", {"inputs": [TEXT, "Héllo"], "add_special_tokens": True}),
    ("POST", "/classify", {"input": [TEXT], "model": "sentiment"}),
    ("POST", "/", {"inputs": TEXT, "truncation_direction": "Left"}),
    ("POST", "/invocations", {"inputs": [TEXT]}),
    ("POST", "/", {"inputs": {"source_sentence": TEXT, "sentences": ["Maps.", "Taxes."]}}),
    ("POST", "/similarity", {"inputs": {"source_sentence": TEXT, "sentences": ["Maps."]}}),
    ("POST", "/embeddings", {"input": [TEXT], "modality": "text"}),
]


def test_every_operation_has_a_targeted_success() -> None:
    """A new route must come with a request here, or its success body goes unchecked."""
    # The rerank routes' successes need a served reranker: test_rerank.py checks them.
    from tests.integration.test_rerank import RERANK_SUCCESSES

    covered = {(method, path) for method, path, _ in [*SUCCESSES, *RERANK_SUCCESSES]}
    assert covered == {(op.method.upper(), op.path) for op in OPERATIONS}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    SUCCESSES,
    ids=[f"{method} {path} {index}" for index, (method, path, _) in enumerate(SUCCESSES)],
)
def test_success_body_matches_its_declared_schema(
    server: LiveServer, method: str, path: str, body: dict[str, Any] | None
) -> None:
    operation = SCHEMA[path][method]
    case = operation.Case(body=body, media_type="application/json") if body else operation.Case()
    response = case.call(base_url=server.url, timeout=60)
    assert response.status_code == 200, response.text[:500]
    case.validate_response(response, checks=CHECKS)


def test_tokenize_reports_truncation(server: LiveServer) -> None:
    with server.client() as client:
        body = client.post("/tokenize", json={"inputs": ["short", "word " * 400]}).json()
    assert body["truncated"] == [False, True]
    assert len(body["tokens"][1]) == 256  # the model's max length, special tokens included


# Only operations that take input can be sent input that breaks their schema.
WITH_BODY = [op for op in OPERATIONS if op.method.upper() == "POST"]


@pytest.mark.slow
@pytest.mark.parametrize("operation", WITH_BODY, ids=lambda op: f"{op.method.upper()} {op.path}")
def test_invalid_requests_get_documented_errors(server: LiveServer, operation) -> None:
    @given(case=operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    @settings(FUZZ_SETTINGS, max_examples=CASES_PER_ROUTE)
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=server.url, timeout=60)
        case.validate_response(response, checks=CHECKS)

    check()
