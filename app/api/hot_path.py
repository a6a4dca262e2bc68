"""The hot path: valid requests to the busiest routes, answered without FastAPI's request
machinery but by the routes' own code.

Per single-text request FastAPI's route layers (exception middleware, AsyncExitStack, the
dependency solver, its body reading and validation, `run_endpoint_function`) cost about as
much as parsing, tokenizing and answering together (loadtest/results/floor.md). For a
route in `HOT_PATHS` this middleware, innermost of the app's own (so the guard, CORS and
observability run as for every route), does only what that route needs:

- a JSON content type, the body read, `parse_json` (app/api/bodies.py);
- the route's own request model (`EncodeRequest`…) validated under the app's request limits;
- the route's own endpoint function called with that body and a Starlette `Request`;
- engine errors it raises answered by the app's own error handlers (app/api/errors.py).

Anything else — another content type, a body that is not JSON or fails validation — goes
to the framework as if this middleware were not there (the body is handed over again), so
every error a client can cause is answered by the one error mapping, word for word. Such a
request costs a second parse (errors are not the hot path), except one past a count or
size limit (413), answered here by the same handler before any per-item work. A body over
`HOT_BODY_BYTES` goes to the framework at once, parsed there alone.
The routes themselves are unchanged, and so is the OpenAPI document built from them
(tests/integration/test_hot_path.py compares both).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.bodies import is_json, parse_json
from app.api.errors import engine_error_response, http_error_response
from app.api.lifecycle import ServerState
from app.api.schemas import limits_for_request
from app.engine.errors import EngineError, PayloadTooLarge

# The routes single texts are sent to one by one at high rates. Another POST route whose
# endpoint takes one JSON body model and the `Request` can be added here as it is.
HOT_PATHS = frozenset({"/encode", "/classify", "/v1/embeddings"})
# A larger body goes to the framework unparsed: what the hot path saves is a fixed cost
# per request, nothing beside parsing and validating a large body, and such a body, when
# it fails validation, would be parsed twice on the event loop (a 4 MiB list of token
# ids took ~300 ms, holding up every other request on the worker).
HOT_BODY_BYTES = 64 * 1024

Endpoint = Callable[..., Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class HotRoute:
    route: APIRoute
    model: type[BaseModel]
    endpoint: Endpoint
    body_name: str
    request_name: str

    @classmethod
    def of(cls, route: APIRoute) -> HotRoute:
        """The route's body model and endpoint; ValueError for a route of another kind
        (dependencies, query or path parameters: the framework's to solve)."""
        dependant = route.dependant
        bodies = dependant.body_params
        model = bodies[0].field_info.annotation if len(bodies) == 1 else None
        simple = not (
            dependant.dependencies
            or dependant.path_params
            or dependant.query_params
            or dependant.header_params
            or dependant.cookie_params
        )
        if (
            not simple
            or not isinstance(model, type)
            or not issubclass(model, BaseModel)
            or dependant.request_param_name is None
            or route.methods != {"POST"}
        ):
            raise ValueError(f"{route.path} cannot take the hot path")
        return cls(route, model, route.endpoint, bodies[0].name, dependant.request_param_name)


def hot_routes(routes: Iterable[Any], paths: frozenset[str] = HOT_PATHS) -> dict[str, HotRoute]:
    return {
        route.path: HotRoute.of(route)
        for route in routes
        if isinstance(route, APIRoute) and route.path in paths
    }


class HotPathMiddleware:
    def __init__(self, app: ASGIApp, routes: dict[str, HotRoute], state: ServerState) -> None:
        self.app = app
        self.routes = routes
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if hot is None or scope["method"] != "POST" or not is_json(_content_type(scope)):
            await self.app(scope, receive, send)
            return
        messages = await _read_body(receive)
        if sum(len(message.get("body", b"")) for message in messages) > HOT_BODY_BYTES:
            await self.app(scope, _replay(messages, receive), send)
            return
        # What Starlette's router sets on a match: the route (the metrics' endpoint label).
        scope["route"] = hot.route
        # The app's limits hold for the validators and for the endpoint (as the framework's
        # route sets them: app/api/bodies.py); a request handed over sets them again.
        with limits_for_request(self.state.request_limits):
            try:
                value = hot.model.model_validate(parse_json(_whole_body(messages)))
            except PayloadTooLarge as error:
                # A count or size limit, checked before any per-item work (app/api/
                # schemas.py), which pydantic lets through: answered as the framework's
                # handler would, without a second pass over a body at the limit.
                response = engine_error_response(Request(scope, receive), error)
                await response(scope, receive, send)
                return
            except Exception:
                await self.app(scope, _replay(messages, receive), send)
                return
            request = Request(scope, receive)
            try:
                response = await hot.endpoint(**{hot.body_name: value, hot.request_name: request})
            except EngineError as error:
                response = engine_error_response(request, error)
            except HTTPException as error:
                response = http_error_response(request, error)
        await response(scope, receive, send)


def _content_type(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return str(value.decode("latin-1"))
    return None


async def _read_body(receive: Receive) -> list[Message]:
    """The messages of the request's body, up to its last one or the client's disconnect
    (the guard has bounded its size already)."""
    messages = [await receive()]
    while messages[-1]["type"] == "http.request" and messages[-1].get("more_body", False):
        messages.append(await receive())
    return messages


class Incomplete(Exception):
    """The client left before its body was whole: the framework's to answer."""


def _whole_body(messages: list[Message]) -> bytes:
    if messages[-1]["type"] != "http.request":
        raise Incomplete
    if len(messages) == 1:
        body: bytes = messages[0].get("body", b"")
        return body  # the usual case: the whole body in one message
    return b"".join(message.get("body", b"") for message in messages)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """The body's messages once more, then the connection's own (the disconnect)."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


__all__ = ["HOT_PATHS", "HotPathMiddleware", "HotRoute", "hot_routes"]
