"""A 503 while the server starts or drains is expected and logged as a warning; an engine
failure (500) stays an error, so alerts on error lines see only real problems."""

from __future__ import annotations

import logging

import pytest
from starlette.requests import Request

from app.api.errors import engine_error_response
from app.engine import errors


def request() -> Request:
    return Request({"type": "http", "method": "POST", "path": "/encode", "headers": []})


@pytest.mark.parametrize(
    ("error", "status", "level"),
    [
        (errors.NotReady("the server is shutting down"), 503, logging.WARNING),
        (errors.InferenceFailed("the pass failed"), 500, logging.ERROR),
    ],
)
def test_log_level_follows_the_kind_of_5xx(
    caplog: pytest.LogCaptureFixture, error: errors.EngineError, status: int, level: int
) -> None:
    with caplog.at_level(logging.INFO, logger="app.api.errors"):
        response = engine_error_response(request(), error)
    assert response.status_code == status
    (record,) = [r for r in caplog.records if r.name == "app.api.errors"]
    assert record.levelno == level and str(error) in record.getMessage()
