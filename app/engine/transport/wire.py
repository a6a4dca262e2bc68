"""The binary framing between front-end workers and the engine process.

Hand-written because it is small and hot: per request a worker sends token ids and gets
float32 vectors back, and both travel as raw array bytes behind a fixed struct header
(no JSON, no pickle; measured against both in `loadtest/transport.py`). Only rare control
messages (app/engine/transport/control.py: the handshake, model descriptions, status, errors) carry
JSON, encoded and decoded here.

A frame is a `u32` body length, then the body: a head (`u8` kind, `u32` request id) and
the kind's payload, all little-endian. Each part's fixed fields, as `struct` formats
(`LAYOUT` below; tests/unit/test_wire.py checks that this table says the same):

    part    kind  struct  fixed fields
    length  -     <I      body length
    head    -     <BI     kind, request id
    RUN     1     <dHIB   timeout s, name length, inputs, priority
    CANCEL  2     -       -
    CALL    3     -       -
    RESULT  4     <ddB    queue s, inference s, dimensions
    ERROR   5     <I      Retry-After s
    REPLY   6     -       -
    HELLO   7     -       -

and what follows them:

- RUN (worker → engine): the service name (UTF-8), `u32` tokens per input, `i32` token
  ids, `u8` token type ids; priority 0 is normal, 1 low.
- CANCEL (worker → engine): nothing; the request's inputs leave the queue.
- CALL (worker → engine) and REPLY (engine → worker): a control message, a JSON object.
- RESULT (engine → worker): `u32` per dimension, then float32 values (C order).
- ERROR (engine → worker): a JSON object `{"type", "message"}` naming an
  `app.engine.errors` class.
- HELLO (both ways, request id 0, the first frame each side sends on a connection): the
  sender's build, JSON `{"package", "protocol"}`. It never changes, so two builds can
  always tell that they differ.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pydantic
import pydantic_core

from app.engine import errors
from app.engine.models.tokenization import TokenizedText
from app.engine.transport import control

RUN, CANCEL, CALL, RESULT, ERROR, REPLY, HELLO = range(1, 8)

_LENGTH = struct.Struct("<I")
_HEAD = struct.Struct("<BI")
_RUN = struct.Struct("<dHIB")
_RESULT = struct.Struct("<ddB")
_ERROR = struct.Struct("<I")

# The table of the module docstring: each part's kind and the struct of its fixed fields.
LAYOUT: dict[str, tuple[int | None, struct.Struct | None]] = {
    "length": (None, _LENGTH),
    "head": (None, _HEAD),
    "RUN": (RUN, _RUN),
    "CANCEL": (CANCEL, None),
    "CALL": (CALL, None),
    "RESULT": (RESULT, _RESULT),
    "ERROR": (ERROR, _ERROR),
    "REPLY": (REPLY, None),
    "HELLO": (HELLO, None),
}

# A frame larger than this is a bug or garbage on the socket, not a request: the biggest
# real one is an attention map of 12 layers x 12 heads x 512^2 tokens (~150 MB).
MAX_FRAME_BYTES = 1 << 30


class WireError(Exception):
    """A frame that breaks the format (the connection is then closed)."""


class FrameWriter:
    """A connection's outgoing frames, sent together once per event-loop iteration.

    Under load a batch answers many requests of one worker at once, and a worker sends
    many requests in one iteration; one `writelines` (one `writev`) for all of them costs
    the sender one system call and the receiver one wake-up instead of one per frame.
    Frames keep their order, so a CANCEL never overtakes its RUN.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._frames: list[bytes] = []

    def write(self, frame: bytes) -> None:
        if not self._frames:
            asyncio.get_running_loop().call_soon(self._flush)
        self._frames.append(frame)

    def _flush(self) -> None:
        frames, self._frames = self._frames, []
        if not self._writer.is_closing():
            self._writer.writelines(frames)

    async def drain(self) -> None:
        """Wait while the peer is not reading (backpressure); ConnectionError if lost."""
        await self._writer.drain()

    def is_closing(self) -> bool:
        return self._writer.is_closing()

    def close(self) -> None:
        """Close after sending what was written (the transport flushes its buffer)."""
        self._flush()
        self._writer.close()


def _frame(kind: int, request_id: int, *parts: bytes | memoryview) -> bytes:
    body = b"".join((_HEAD.pack(kind, request_id), *parts))
    return _LENGTH.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, memoryview]:
    """(kind, request id, payload); IncompleteReadError when the peer closed."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if not _HEAD.size <= length <= MAX_FRAME_BYTES:
        raise WireError(f"frame of {length} bytes")
    body = memoryview(await reader.readexactly(length))
    kind, request_id = _HEAD.unpack_from(body)
    return kind, request_id, body[_HEAD.size :]


# -- token ids in -----------------------------------------------------------


def encode_run(
    request_id: int,
    service: str,
    items: list[TokenizedText],
    timeout_s: float,
    *,
    low: bool = False,
) -> bytes:
    name = service.encode()
    lengths = struct.pack(f"<{len(items)}I", *(item.tokens for item in items))
    if len(items) == 1:  # the common case, without numpy's concatenation overhead
        ids, type_ids = items[0].ids, items[0].type_ids
    else:
        ids = np.concatenate([item.ids for item in items])
        type_ids = np.concatenate([item.type_ids for item in items])
    header = _RUN.pack(timeout_s, len(name), len(items), int(low))
    return _frame(
        RUN,
        request_id,
        header,
        name,
        lengths,
        ids.astype("<i4").tobytes(),
        type_ids.astype(np.uint8).tobytes(),
    )


@dataclass(frozen=True)
class RunRequest:
    service: str
    items: list[TokenizedText]
    timeout_s: float
    low: bool = False  # low priority (an explanation's perturbations)


def decode_run(payload: memoryview) -> RunRequest:
    timeout_s, name_length, count, low = _RUN.unpack_from(payload)
    offset = _RUN.size
    service = str(payload[offset : offset + name_length], "utf-8")
    offset += name_length
    lengths = struct.unpack_from(f"<{count}I", payload, offset)
    offset += 4 * count
    total = sum(lengths)
    ids = np.frombuffer(payload, dtype="<i4", count=total, offset=offset).astype(np.int64)
    type_ids = np.frombuffer(payload, dtype=np.uint8, count=total, offset=offset + 4 * total)
    type_ids = type_ids.astype(np.int64)
    items = []
    start = 0
    for length in lengths:  # views into the two arrays, no copies
        stop = start + length
        items.append(TokenizedText(ids[start:stop], type_ids[start:stop], truncated=False))
        start = stop
    return RunRequest(service, items, timeout_s, bool(low))


# -- vectors out ------------------------------------------------------------


def encode_result(request_id: int, values: np.ndarray, queue_s: float, inference_s: float) -> bytes:
    values = np.ascontiguousarray(values, dtype="<f4")
    shape = struct.pack(f"<{values.ndim}I", *values.shape)
    header = _RESULT.pack(queue_s, inference_s, values.ndim)
    return _frame(RESULT, request_id, header, shape, values.data)


@dataclass(frozen=True)
class RunResult:
    values: np.ndarray
    queue_s: float
    inference_s: float


def decode_result(payload: memoryview) -> RunResult:
    queue_s, inference_s, ndim = _RESULT.unpack_from(payload)
    shape = struct.unpack_from(f"<{ndim}I", payload, _RESULT.size)
    values = np.frombuffer(payload[_RESULT.size + 4 * ndim :], dtype="<f4").reshape(shape)
    return RunResult(values, queue_s, inference_s)


# -- errors and control -----------------------------------------------------

T = TypeVar("T")

_HELLO = pydantic.TypeAdapter(control.Build)
_CALLS: pydantic.TypeAdapter[control.Call] = pydantic.TypeAdapter(control.Call)
_REPLIES: pydantic.TypeAdapter[control.Reply] = pydantic.TypeAdapter(control.Reply)
_RAISED = pydantic.TypeAdapter(control.RaisedError)


def _decode(adapter: pydantic.TypeAdapter[T], data: bytes | memoryview, what: str) -> T:
    """A control message of the adapter's type, or WireError in one line saying what is
    wrong with it (an unknown message, a missing, unknown or mistyped field, no JSON)."""
    try:
        return adapter.validate_json(bytes(data))
    except pydantic.ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        problem = f"{where}: {first['msg']}" if where else first["msg"]
        raise WireError(f"malformed {what} message: {problem}") from None


def encode_error(request_id: int, error: errors.EngineError) -> bytes:
    retry_after = getattr(error, "retry_after_s", 0)
    # An exception's text may hold a lone surrogate, which UTF-8 (and so JSON) cannot
    # carry: it travels as its escape, so that the answer still goes out.
    message = str(error).encode("utf-8", "backslashreplace").decode("utf-8")
    raised = control.RaisedError(type(error).__name__, message)
    return _frame(ERROR, request_id, _ERROR.pack(retry_after), pydantic_core.to_json(raised))


def decode_error(payload: memoryview) -> errors.EngineError:
    """The engine's exception, rebuilt as the same class (InferenceFailed if unknown)."""
    (retry_after,) = _ERROR.unpack_from(payload)
    raised = _decode(_RAISED, payload[_ERROR.size :], "ERROR")
    kind = getattr(errors, raised.type, None)
    if kind is errors.Overloaded:
        return errors.Overloaded(raised.message, retry_after_s=retry_after)
    if isinstance(kind, type) and issubclass(kind, errors.EngineError):
        return kind(raised.message)
    return errors.InferenceFailed(raised.message)


def encode_hello(build: control.Build) -> bytes:
    return _frame(HELLO, 0, pydantic_core.to_json(build))


def decode_hello(payload: memoryview) -> control.Build:
    return _decode(_HELLO, payload, "HELLO")


def encode_call(request_id: int, call: control.Call) -> bytes:
    return _frame(CALL, request_id, pydantic_core.to_json(call))


def decode_call(payload: memoryview) -> control.Call:
    return _decode(_CALLS, payload, "CALL")


def encode_reply(request_id: int, reply: control.Reply) -> bytes:
    return _frame(REPLY, request_id, pydantic_core.to_json(reply))


def decode_reply(payload: memoryview) -> control.Reply:
    return _decode(_REPLIES, payload, "REPLY")


def encode_cancel(request_id: int) -> bytes:
    return _frame(CANCEL, request_id)
