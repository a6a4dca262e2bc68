"""What every route does with a request: the engine, the model label, disconnects, JSON."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

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
    dropped before they cost a forward pass."""
    task = asyncio.ensure_future(work)
    # After the body is read, the next ASGI message is the client's disconnect.
    watcher = asyncio.ensure_future(request.receive())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    hung_up = not task.done() and watcher.done() and not watcher.cancelled()
    if hung_up and watcher.result().get("type") == "http.disconnect":
        task.cancel()
        raise ClientDisconnected("the client closed the connection before the answer")
    return await task
