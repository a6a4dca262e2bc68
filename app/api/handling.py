"""What every route does with a request: the engine, the model label, disconnects, JSON."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request
from starlette.types import Message

from app.api.answers import json_response
from app.api.lifecycle import ServerState
from app.engine.contract import Engine, ModelDescription, Task
from app.engine.errors import ClientDisconnected

T = TypeVar("T")

__all__ = ["engine", "json_response", "resolve_model", "server_state", "unless_disconnected"]


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


def engine(request: Request) -> Engine:
    """The engine serving this request (NotReady, a 503, while loading or draining)."""
    return server_state(request).engine


def resolve_model(request: Request, name: str | None, task: Task) -> ModelDescription:
    """The model a request names (or the default for `task`), labelled on its metrics."""
    model = engine(request).model(name, task)
    request.state.model = model.name  # the `model` label of this request's metrics
    return model


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await engine work; if the client hangs up first, cancel it so its queued inputs are
    dropped before they cost a forward pass.

    The work runs in the request's own task (one task per request, not two): the watcher
    of the connection cancels that task when the client hangs up, and the cancellation is
    told from any other (the server shutting down) by who asked for it."""
    current = asyncio.current_task()
    assert current is not None  # an ASGI app runs in a task
    hung_up = False

    def on_message(watcher: asyncio.Future[Message]) -> None:
        nonlocal hung_up
        if watcher.cancelled() or watcher.exception() is not None:
            return
        if watcher.result().get("type") == "http.disconnect":
            hung_up = True
            current.cancel()

    # After the body is read, the next ASGI message is the client's disconnect.
    watcher: asyncio.Future[Message] = asyncio.ensure_future(request.receive())
    watcher.add_done_callback(on_message)
    try:
        return await work
    except asyncio.CancelledError:
        if hung_up and current.uncancel() == 0:
            raise ClientDisconnected("the client closed the connection before the answer") from None
        raise
    finally:
        watcher.remove_done_callback(on_message)
        watcher.cancel()
