"""JSON answers: serialized in slices with the event loop free between them, and sent as
fast as the client reads them.

orjson holds the GIL for a whole call, so a big answer serialized in one call (TEI's
`/embed_all` of 256 long inputs is ~25 million floats, most of a second) stops every other
request, `/health` included, however it is scheduled. Here an answer is cut into slices
of at most `SLICE_ITEMS` numbers or other leaves (a few milliseconds each) and the loop
runs between them. An answer that fits `SEND_BYTES` goes out whole with its
Content-Length, as before; a larger one is streamed (chunked transfer encoding): each
slice is serialized only once the connection has taken the previous ones (uvicorn waits
for the socket to drain before each write), so a client that does not read holds its
answer's arrays and one slice, never the whole JSON text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.api.connections import HOLD_EXTENSION

OPTIONS = orjson.OPT_SERIALIZE_NUMPY  # numpy float32 arrays written directly
# Numbers (or strings, booleans) per orjson call: ~1.5 ms of serializing float32 on this
# machine's cores (about 11 bytes of JSON each, so ~350 KB per slice).
SLICE_ITEMS = 32768
# An answer is collected up to this many bytes; one that ends within it gets a
# Content-Length, a longer one is streamed in writes of about this size.
SEND_BYTES = 512 * 1024
# Lists longer than this are weighed from their first item instead of item by item.
WEIGH_EXACTLY = 1024
LEAF_BYTES = 16  # what a Python leaf (a float, a short string) holds, for the ledger


def weight(value: Any, exact: bool = True) -> int:
    """About how many leaves `value` holds: what serializing it costs. Cheap: arrays by
    their size, strings by their length, the items of the outer lists one by one (inputs
    differ in length), the inner lists (a text's tokens, its labels) from their first."""
    if isinstance(value, np.ndarray):
        return max(int(value.size), 1)
    if isinstance(value, str):
        return 1 + len(value) // 64
    if isinstance(value, dict):
        return 1 + sum(weight(item, exact) for item in value.values())
    if isinstance(value, list | tuple):
        if not value:
            return 1
        if exact and len(value) <= WEIGH_EXACTLY:
            return 1 + sum(weight(item, False) for item in value)
        return 1 + len(value) * weight(value[0], False)
    return 1


def held_bytes(value: Any) -> int:
    """About what the answer's data holds in memory while it is sent."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(held_bytes(item) for item in value.values())
    if isinstance(value, list | tuple) and value and isinstance(value[0], np.ndarray):
        return sum(held_bytes(item) for item in value)
    return weight(value) * LEAF_BYTES


def _inner(value: Any) -> bytes:
    """The JSON of a list or array without its brackets: a run of items to splice."""
    if isinstance(value, np.ndarray):
        value = np.ascontiguousarray(value)  # a slice of a C-order array: no copy
    return orjson.dumps(value, option=OPTIONS)[1:-1]


def _items(value: Any) -> Iterator[bytes]:
    """The items of a heavy list or array, as comma-separated runs of at most a slice."""
    separator = b""
    if isinstance(value, np.ndarray):
        rows = value.shape[0]
        per_row = max(int(value.size) // max(rows, 1), 1)
        if per_row <= SLICE_ITEMS:
            step = max(SLICE_ITEMS // per_row, 1)
            for start in range(0, rows, step):
                yield separator + _inner(value[start : start + step])
                separator = b","
        else:
            for row in value:
                yield separator
                yield from pieces(row)
                separator = b","
        return
    run: list[Any] = []
    run_weight = 0
    for item in value:
        item_weight = weight(item)
        if run and run_weight + item_weight > SLICE_ITEMS:
            yield separator + _inner(run)
            separator, run, run_weight = b",", [], 0
        if item_weight > SLICE_ITEMS:
            yield separator
            yield from pieces(item)
            separator = b","
            continue
        run.append(item)
        run_weight += item_weight
    if run:
        yield separator + _inner(run)


def pieces(value: Any) -> Iterator[bytes]:
    """`value`'s JSON, exactly as `orjson.dumps` writes it, in pieces of bounded cost."""
    if weight(value) <= SLICE_ITEMS or (isinstance(value, np.ndarray) and value.ndim == 0):
        yield orjson.dumps(value, option=OPTIONS)
    elif isinstance(value, dict):
        separator = b"{"
        for key, item in value.items():
            yield separator + orjson.dumps(key) + b":"
            yield from pieces(item)
            separator = b","
        yield b"}" if separator == b"," else b"{}"
    elif isinstance(value, list | tuple | np.ndarray):
        yield b"["
        yield from _items(value)
        yield b"]"
    else:
        yield orjson.dumps(value, option=OPTIONS)


class StreamedJSON(Response):
    """A JSON answer too heavy for one orjson call: see the module's docstring."""

    media_type = "application/json"

    def __init__(self, content: Any, status_code: int = 200) -> None:
        self.status_code = status_code
        self.background = None
        self.body = b""
        self._content = content
        self.raw_headers = [(b"content-type", b"application/json")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The connection counts what this answer holds while it waits for the client
        # (app/api/connections.py): a stalled one can then be told from a busy one.
        hold = (scope.get("extensions") or {}).get(HOLD_EXTENSION, {}).get("hold")
        if hold is not None:
            hold(held_bytes(self._content))
        watcher: asyncio.Future[Any] | None = None
        try:
            buffered: list[bytes] = []
            size = 0
            for piece in pieces(self._content):
                buffered.append(piece)
                size += len(piece)
                await asyncio.sleep(0)  # the loop runs between slices
                if size < SEND_BYTES:
                    continue
                if watcher is None:
                    await send(self._start(None))
                    # The next message is the client's disconnect: stop serializing then.
                    watcher = asyncio.ensure_future(_disconnect(receive))
                await send(
                    {"type": "http.response.body", "body": b"".join(buffered), "more_body": True}
                )
                buffered, size = [], 0
                if watcher.done():
                    return
            if watcher is None:
                body = b"".join(buffered)
                await send(self._start(len(body)))
                await send({"type": "http.response.body", "body": body})
            else:
                await send({"type": "http.response.body", "body": b"".join(buffered)})
        finally:
            if watcher is not None:
                watcher.cancel()
            if hold is not None:
                hold(0)
        if self.background is not None:
            await self.background()

    def _start(self, length: int | None) -> dict[str, Any]:
        headers = list(self.raw_headers)
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        return {"type": "http.response.start", "status": self.status_code, "headers": headers}


async def _disconnect(receive: Receive) -> None:
    """Returns once the client has gone (a body the route did not read comes first)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def json_response(content: Any) -> Response:
    """The one way answers are written: one orjson call when light, else `StreamedJSON`."""
    if weight(content) <= SLICE_ITEMS:
        return Response(orjson.dumps(content, option=OPTIONS), media_type="application/json")
    return StreamedJSON(content)
