"""The worker ↔ engine frames: what goes in comes out, errors keep their class."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from app.engine import errors, wire
from app.engine.tokenization import TokenizedText


def item(ids: list[int], type_id: int = 0) -> TokenizedText:
    array = np.asarray(ids, dtype=np.int64)
    return TokenizedText(array, np.full_like(array, type_id), truncated=False)


async def read(frame: bytes) -> tuple[int, int, memoryview]:
    reader = asyncio.StreamReader()
    reader.feed_data(frame)
    reader.feed_eof()
    return await wire.read_frame(reader)


@pytest.mark.parametrize("lengths", [[1], [7], [3, 1, 250], [512] * 5])
async def test_token_ids_survive_the_trip(lengths: list[int]) -> None:
    rng = np.random.default_rng(sum(lengths))
    items = [item(rng.integers(0, 30522, n).tolist(), type_id=n % 2) for n in lengths]
    kind, request_id, payload = await read(wire.encode_run(77, "minilm-attention", items, 2.5))
    assert (kind, request_id) == (wire.RUN, 77)
    request = wire.decode_run(payload)
    assert request.service == "minilm-attention" and request.timeout_s == 2.5
    assert len(request.items) == len(items)
    for sent, got in zip(items, request.items, strict=True):
        assert got.ids.dtype == np.int64 and got.type_ids.dtype == np.int64
        np.testing.assert_array_equal(got.ids, sent.ids)
        np.testing.assert_array_equal(got.type_ids, sent.type_ids)


@pytest.mark.parametrize("shape", [(1, 384), (32, 768), (1, 6, 12, 9, 9)])
async def test_vectors_and_timings_survive_the_trip(shape: tuple[int, ...]) -> None:
    values = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    kind, request_id, payload = await read(wire.encode_result(5, values, 0.125, 0.5))
    assert (kind, request_id) == (wire.RESULT, 5)
    result = wire.decode_result(payload)
    np.testing.assert_array_equal(result.values, values)
    assert (result.queue_s, result.inference_s) == (0.125, 0.5)


@pytest.mark.parametrize(
    "error",
    [
        errors.Overloaded("queue full", retry_after_s=7),
        errors.DeadlineExceeded("too late"),
        errors.NotReady("draining"),
        errors.ModelNotFound("no such model"),
        errors.InvalidInput("bad ids"),
        errors.InferenceFailed("the backend raised"),
    ],
)
async def test_errors_keep_their_class_message_and_retry_after(error: errors.EngineError) -> None:
    kind, _, payload = await read(wire.encode_error(9, error))
    assert kind == wire.ERROR
    rebuilt = wire.decode_error(payload)
    assert type(rebuilt) is type(error) and str(rebuilt) == str(error)
    assert getattr(rebuilt, "retry_after_s", None) == getattr(error, "retry_after_s", None)


async def test_an_unknown_error_class_becomes_inference_failed() -> None:
    frame = wire.encode_error(1, errors.InferenceFailed(""))  # rebuilt by hand below
    payload = struct.pack("<I", 0) + b'{"type": "SystemExit", "message": "no"}'
    frame = frame[:4] + frame[4:9] + payload
    frame = struct.pack("<I", len(frame) - 4) + frame[4:]
    _, _, body = await read(frame)
    assert type(wire.decode_error(body)) is errors.InferenceFailed


async def test_a_frame_claiming_an_absurd_length_is_refused() -> None:
    with pytest.raises(wire.WireError):
        await read(struct.pack("<I", wire.MAX_FRAME_BYTES + 1) + b"x")
    with pytest.raises(wire.WireError):
        await read(struct.pack("<I", 0))


@pytest.mark.parametrize("low", [False, True])
async def test_the_priority_of_a_run_survives_the_trip(low: bool) -> None:
    frame = wire.encode_run(3, "minilm", [item([101, 7, 102])], 1.0, low=low)
    kind, _, payload = await read(frame)
    request = wire.decode_run(payload)
    assert kind == wire.RUN and request.low is low
    np.testing.assert_array_equal(request.items[0].ids, [101, 7, 102])


async def test_frames_of_one_loop_iteration_leave_together_and_in_order(tmp_path: Path) -> None:
    """FrameWriter: one writelines per iteration (one system call), frames in order."""
    received: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError):
            while True:
                kind, request_id, _payload = await wire.read_frame(reader)
                received.put_nowait((kind, request_id))

    server = await asyncio.start_unix_server(serve, str(tmp_path / "socket"))
    _, stream = await asyncio.open_unix_connection(str(tmp_path / "socket"))
    sends: list[int] = []
    writelines = stream.writelines

    def counted(frames: Iterable[bytes | bytearray | memoryview]) -> None:
        frames = list(frames)
        sends.append(len(frames))
        writelines(frames)

    stream.writelines = counted  # type: ignore[method-assign,assignment]
    writer = wire.FrameWriter(stream)
    for request_id in range(1, 6):
        writer.write(wire.encode_run(request_id, "minilm", [item([101, 102])], 1.0))
    writer.write(wire.encode_cancel(3))
    await writer.drain()
    answers = [await asyncio.wait_for(received.get(), 5) for _ in range(6)]
    assert answers == [(wire.RUN, n) for n in range(1, 6)] + [(wire.CANCEL, 3)]
    assert sends == [6]
    writer.write(wire.encode_cancel(9))  # a later iteration: a write of its own
    assert await asyncio.wait_for(received.get(), 5) == (wire.CANCEL, 9)
    assert sends == [6, 1]
    writer.close()
    server.close()
