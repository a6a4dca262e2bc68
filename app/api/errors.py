"""The one place engine errors become HTTP statuses, always in the contract's JSON error shape."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from app.engine import errors

log = logging.getLogger(__name__)


# Engine error -> (status, error type). Subclasses before their bases.
_STATUS: list[tuple[type[Exception], int, str]] = [
    (errors.InputTooLong, 422, "input_too_long"),
    (errors.InvalidInput, 422, "invalid_request"),
    (errors.ModelNotFound, 404, "model_not_found"),
    (errors.Overloaded, 429, "overloaded"),
    (errors.DeadlineExceeded, 504, "deadline_exceeded"),
    (errors.NotReady, 503, "not_ready"),
    (errors.InferenceFailed, 500, "inference_failed"),
    # nginx's "client closed request": nobody reads it, but logs and metrics show it.
    (errors.ClientDisconnected, 499, "client_closed_request"),
    (errors.PayloadTooLarge, 413, "payload_too_large"),
]

_HTTP_TYPES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}


def error_response(
    status: int, kind: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    body = orjson.dumps({"error": {"type": kind, "message": message}})
    return Response(body, status, headers=headers, media_type="application/json")


def _describe(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    return f"{location}: {message}" if location else message


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = list(exc.errors())
    if any(problem.get("type") == "json_invalid" for problem in problems):
        return error_response(400, "malformed_json", "the request body is not valid JSON")
    if any(problem.get("type") == "model_attributes_type" for problem in problems):
        return error_response(400, "bad_request", "the request body must be a JSON object")
    message = "; ".join(_describe(problem) for problem in problems[:5])
    return error_response(422, "validation_error", message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = _HTTP_TYPES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, kind, str(exc.detail), exc.headers)


async def _engine_error(request: Request, exc: Exception) -> Response:
    for error_type, status, kind in _STATUS:
        if isinstance(exc, error_type):
            headers = None
            if isinstance(exc, errors.Overloaded):
                headers = {"Retry-After": str(exc.retry_after_s)}
            if status >= 500:
                log.error("%s %s failed: %s", request.method, request.url.path, exc)
            return error_response(status, kind, str(exc), headers)
    return await _unexpected_error(request, exc)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error (this is a bug)")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(errors.EngineError, _engine_error)
    app.add_exception_handler(Exception, _unexpected_error)
