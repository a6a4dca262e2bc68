"""Request bodies: strict JSON (valid UTF-8, valid Unicode) and the limits their validators use.

Every route that takes a body is an `StrictJSONRoute`, so this is the one place where
bytes become Python values. A body sent without a JSON content type is a 415 (before it is
read), one that is not UTF-8 a 400; a string with a lone
surrogate escape (`"\\ud800"`, valid JSON but not Unicode) a 422 naming its field. Such
strings never reach a validator, the tokenizer or an error message (orjson, which writes
every answer, refuses to write them).
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import orjson
from fastapi import Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from app.api.errors import RequestRejected
from app.api.lifecycle import ServerState
from app.api.schemas import RequestLimits, limits_for_request

NOT_UTF8 = "the request body is not valid UTF-8 JSON"
JSON_MEDIA_TYPE = "application/json"


def is_json(content_type: str | None) -> bool:
    """`application/json` (any parameters, any case), or a `+json` type such as
    `application/merge-patch+json`: what FastAPI itself reads as JSON."""
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON_MEDIA_TYPE or (
        media.startswith("application/") and media.endswith("+json")
    )


def check_content_type(content_type: str | None) -> None:
    """RequestRejected (415) unless the body is declared JSON."""
    if is_json(content_type):
        return
    sent = "none" if content_type is None else repr(content_type[:100])
    raise RequestRejected(
        415,
        "unsupported_media_type",
        f"the request body must be JSON sent with 'Content-Type: {JSON_MEDIA_TYPE}' "
        f"(the request's content type: {sent})",
    )


# JSON makes no reference cycles, so the cyclic collector has nothing to find among a
# body's objects; yet a large body of small lists sets off hundreds of its passes while it
# is parsed (half the time of a 4 MB list of token-id pairs, which holds the event loop).
PAUSE_COLLECTOR_BYTES = 1 << 20


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_json(body: bytes) -> Any:
    """The JSON value of `body`; RequestRejected (400, 422) for what is not Unicode.

    orjson reads valid bodies (fast, and it refuses invalid UTF-8 and lone surrogates).
    What it refuses is read again by the standard library, only to tell why: invalid
    UTF-8 (400), a lone surrogate (422, with its path), malformed JSON
    (json.JSONDecodeError, which FastAPI turns into the usual 400), or JSON that orjson
    is stricter about than the standard library (NaN, numbers beyond a double), which is
    accepted as before and left to the fields' validation.
    """
    try:
        if len(body) < PAUSE_COLLECTOR_BYTES:
            return orjson.loads(body)
        with _collector_paused():
            return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestRejected(400, "malformed_json", NOT_UTF8) from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise RequestRejected(
            400, "malformed_json", "the request body is nested too deeply"
        ) from None
    path = lone_surrogate_path(value)
    if path is not None:
        where = path or "the request body"
        raise RequestRejected(
            422,
            "validation_error",
            f"{where} contains a lone surrogate escape (\\ud800-\\udfff), which is not valid "
            "Unicode; send text as UTF-8 or as paired escapes",
        )
    return value


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _children(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield (f"{path}.{key}" if path else str(key)), item
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield f"{path}.{index}", item


def lone_surrogate_path(value: Any) -> str | None:
    """The dotted path (as validation errors name fields) of the first string, or object
    key, that holds a lone surrogate; None when there is none. Iterative: a deeply nested
    body cannot exhaust the stack."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not _is_unicode(item):
                return path
            continue
        if isinstance(item, dict):
            for key in item:
                if not _is_unicode(key):
                    return f"{path}.{key}" if path else key
        children = list(_children(item, path))
        stack.extend(reversed(children))
    return None


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """Checks the content type of a body (415), parses it with `parse_json`, and validates it
    under this app's request limits."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        takes_body = self.body_field is not None

        async def strict_handler(request: Request) -> Response:
            if takes_body:
                check_content_type(request.headers.get("content-type"))
            state: ServerState = request.app.state.server
            with limits_for_request(state.request_limits):
                return await handle(StrictJSONRequest(request.scope, request.receive))

        return strict_handler


__all__ = [
    "NOT_UTF8",
    "RequestLimits",
    "StrictJSONRoute",
    "check_content_type",
    "is_json",
    "lone_surrogate_path",
    "parse_json",
]
