"""The port the request side runs its passes through: a model's batch service.

Implemented by the batcher in this process (`app.engine.batching.batcher.DynamicBatcher`)
and, in a front-end worker, by the engine process's batchers over the socket
(`app.engine.transport.client.RemoteBatches`). Defined here, on the side that uses it, so
the request side imports no batcher and no session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

PayloadIn = TypeVar("PayloadIn", contravariant=True)
Result = TypeVar("Result")


def attention_service(name: str) -> str:
    """The name under which a model's attention batcher is served."""
    return f"{name}-attention"


def token_service(name: str) -> str:
    """The name under which a model's per-token states batcher is served."""
    return f"{name}-tokens"


class BatchService(Protocol[PayloadIn, Result]):
    """What the request side needs of a batcher: a `DynamicBatcher` in this process, or
    the engine process's one through `app/engine/transport/client.py`."""

    async def process(
        self, payloads: Sequence[tuple[PayloadIn, int]], timeout_s: float, *, low: bool = False
    ) -> list[Result]:
        """`low`: queue at low priority (see DynamicBatcher)."""
        ...


def settle(futures: list[asyncio.Future[Any]]) -> None:
    """Leave no input behind: cancel those still queued (the batcher then drops them) and
    mark the failures of the rest as seen (asyncio would log them as never retrieved)."""
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()
