"""The one place engine errors become HTTP statuses, in the contract's JSON error shape.

Routes under /v1/ (the OpenAI-compatible API) answer in OpenAI's error shape instead,
and the text-embeddings-inference routes (app/api/tei.py) in TEI's, with TEI's statuses,
so each API's own client libraries report them properly. Messages are sentences that
name the field once ("dimensions must be at least 1"), whichever layer found the problem.
"""

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

_HTTP_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    415: "unsupported_media_type",
}


class RequestRejected(HTTPException):
    """A request refused before its fields are validated (its body), with its error type."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(status, message)
        self.kind = kind


OPENAI_PREFIX = "/v1/"
# OpenAI's embeddings without the version prefix (TEI's and infinity's path): its shape too.
OPENAI_PATHS = frozenset({"/embeddings"})
# The routes of app/api/tei.py and tei_root.py, and TEI's /rerank (app/api/rerank.py): TEI's
# error shape, {"error": "...", "error_type": "..."}. "/" is TEI's POST / (the viewer page
# is GET /).
TEI_PATHS = frozenset(
    {
        "/",
        "/invocations",
        "/embed",
        "/embed_all",
        "/predict",
        "/decode",
        "/info",
        "/similarity",
        "/rerank",
    }
)
# TEI's status for engine errors where it differs from the contract's (TEI's router maps
# its ErrorType so: an over-long input is a `validation` error, 413; a route the served
# model cannot answer and a failed inference are `backend` errors, 424).
_TEI_STATUS = {"input_too_long": 413, "model_not_found": 424, "inference_failed": 424}


def _openai_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def _tei_type(status: int, kind: str) -> str:
    """TEI's ErrorType: `empty` (400, no inputs), `tokenizer` (422), `overloaded` (429),
    `unhealthy` (503), `backend` (424, and the errors of the server), else `validation`
    (413 in TEI; also what TEI's JSON extractor refuses: malformed bodies and fields)."""
    if kind in ("empty", "tokenizer"):
        return kind
    if status in (429, 504):
        return "overloaded"
    if status == 503:
        return "unhealthy"
    if status == 424 or status >= 500:
        return "backend"
    return "validation"


def _writable(text: str) -> str:
    """`text` with lone surrogates escaped (`\\ud800`): orjson refuses to write them."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(status: int, kind: str, message: str, path: str = "") -> bytes:
    # Messages may quote what a client sent; whatever it was, the answer must be writable.
    message = _writable(message)
    if path.startswith(OPENAI_PREFIX) or path in OPENAI_PATHS:
        error = {"message": message, "type": _openai_type(status), "param": None, "code": kind}
        return orjson.dumps({"error": error})
    if path in TEI_PATHS:
        return orjson.dumps({"error": message, "error_type": _tei_type(status, kind)})
    return orjson.dumps({"error": {"type": kind, "message": message}})


def error_response(
    status: int,
    kind: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    path: str = "",
) -> Response:
    body = error_body(status, kind, message, path)
    return Response(body, status, headers=headers, media_type="application/json")


# A validator's message that starts with one of these reads as a sentence after the
# field's name ("dimensions" + "must be at least 1"); others follow it after a colon.
_PREDICATES = ("must ", "should ", "is ", "are ", "has ", "holds ", "contains ", "cannot ")


def _describe(error: dict[str, Any]) -> str:
    """One validation problem as a sentence naming its field once."""
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    message = str(error.get("msg", ""))
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if not location:
        return message
    kind = error.get("type")
    if kind == "missing":
        return f"{location} is required"
    if kind == "extra_forbidden":
        return f"{location} is not a field of this request"
    if message.startswith("Input should "):  # pydantic's own wording
        return f"{location} {message.removeprefix('Input ')}"
    field = location.split(".", 1)[0]
    if message.startswith(f"{field} "):  # the validator named it already
        return message
    if message.startswith(_PREDICATES):
        return f"{location} {message}"
    return f"{location}: {message}"


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = list(exc.errors())
    if any(problem.get("type") == "json_invalid" for problem in problems):
        return error_response(
            400, "malformed_json", "the request body is not valid JSON", path=request.url.path
        )
    if any(
        problem.get("type") == "model_attributes_type"
        # A route whose body is any object (TEI's POST /), given something else.
        or (problem.get("type") == "dict_type" and tuple(problem.get("loc", ())) == ("body",))
        for problem in problems
    ):
        return error_response(
            400, "bad_request", "the request body must be a JSON object", path=request.url.path
        )
    message = "; ".join(_describe(problem) for problem in problems[:5])
    return error_response(422, "validation_error", message, path=request.url.path)


def http_error_response(request: Request, exc: HTTPException) -> Response:
    if isinstance(exc, RequestRejected):
        kind = exc.kind
    else:
        kind = _HTTP_TYPES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, kind, str(exc.detail), exc.headers, request.url.path)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return http_error_response(request, exc)


def engine_error_response(request: Request, exc: errors.EngineError) -> Response:
    """The answer to an engine error: its status and type from the table above."""
    for error_type, status, kind in _STATUS:
        if isinstance(exc, error_type):
            headers = None
            if isinstance(exc, errors.Overloaded):
                headers = {"Retry-After": str(exc.retry_after_s)}
            if isinstance(exc, errors.NotReady):
                # Starting or draining: expected, and the client is told to go elsewhere.
                log.warning("%s %s refused: %s", request.method, request.url.path, exc)
            elif status >= 500:
                log.error("%s %s failed: %s", request.method, request.url.path, exc)
            if request.url.path in TEI_PATHS:
                status = _TEI_STATUS.get(kind, status)
            return error_response(status, kind, str(exc), headers, request.url.path)
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return internal_error_response(request.url.path)


async def _engine_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.EngineError)
    return engine_error_response(request, exc)


def internal_error_response(path: str) -> Response:
    """The answer to an unexpected exception (a bug), whichever layer caught it."""
    return error_response(500, "internal_error", "internal server error (this is a bug)", path=path)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    # Not logged here: Starlette raises the exception again once this answer is out, and
    # RequestObservabilityMiddleware, around the whole app, logs it with the request id.
    return internal_error_response(request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(errors.EngineError, _engine_error)
    # Unexpected exceptions in routes are answered by Starlette's ServerErrorMiddleware with
    # this handler (internal_error_response), inside RequestObservabilityMiddleware (app/api/
    # app.py: request id and timing headers, metrics, the log line, keep-alive); on the hot
    # path the middleware answers them itself, with the same response.
    app.add_exception_handler(Exception, _unexpected_error)
