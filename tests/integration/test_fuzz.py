"""Fuzzing the live server from its own OpenAPI document: no 500, every error in the JSON shape."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import given, settings

from app.api.app import create_app
from app.config import Settings
from tests.conftest import LiveServer
from tests.error_shapes import error_message
from tests.integration.test_contract import CHECKS, FUZZ_SETTINGS

# The document comes from the app itself (no models needed to build it).
SCHEMA = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
CASES_PER_ROUTE = 200


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: f"{op.method.upper()} {op.path}")
def test_no_server_errors_and_every_error_in_the_contract_shape(
    server: LiveServer, operation
) -> None:
    @given(case=operation.as_strategy())
    @settings(FUZZ_SETTINGS, max_examples=CASES_PER_ROUTE)
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=server.url, timeout=60)
        assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
        if response.status_code >= 400:
            # The OpenAI-compatible routes answer in OpenAI's error shape, TEI's in TEI's.
            error_message(response.json(), operation.path)
        case.validate_response(response, checks=CHECKS)  # every answer matches the document

    check()
