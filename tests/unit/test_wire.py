"""The worker ↔ engine frames: what goes in comes out, errors keep their class."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest

from app.engine import errors
from app.engine.contract import ModelDescription
from app.engine.models.tokenization import TokenizedText
from app.engine.transport import control, wire


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


# -- the frame layout, written once ------------------------------------------


def docstring_layout() -> dict[str, tuple[int | None, str | None, int]]:
    """The table of wire.py's docstring: part -> (kind, struct format, number of fields)."""
    lines = (wire.__doc__ or "").splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == TABLE_HEADER)
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        part, kind, layout, fields = line.split(maxsplit=3)
        rows[part] = (
            None if kind == "-" else int(kind),
            None if layout == "-" else layout,
            0 if fields == "-" else len(fields.split(", ")),
        )
    return rows


TABLE_HEADER = ["part", "kind", "struct", "fixed", "fields"]


def test_the_docstring_table_is_the_frame_layout_of_the_code() -> None:
    in_code: dict[str, tuple[int | None, str | None, int]] = {}
    for part, (kind, fixed) in wire.LAYOUT.items():
        if fixed is None:
            in_code[part] = (kind, None, 0)
        else:  # one field named in the table per value the struct packs
            in_code[part] = (kind, fixed.format, len(fixed.unpack(bytes(fixed.size))))
    assert docstring_layout() == in_code
    kinds = {wire.RUN, wire.CANCEL, wire.CALL, wire.RESULT, wire.ERROR, wire.REPLY, wire.HELLO}
    assert sorted(kind for kind, _ in wire.LAYOUT.values() if kind is not None) == sorted(kinds)
    assert (wire.LAYOUT["length"][1], wire.LAYOUT["head"][1]) == (wire._LENGTH, wire._HEAD)


def test_the_frame_layout_test_notices_a_docstring_out_of_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    edited = (wire.__doc__ or "").replace("<dHIB", "<dHIIB")
    monkeypatch.setattr(wire, "__doc__", edited)
    with pytest.raises(AssertionError):
        test_the_docstring_table_is_the_frame_layout_of_the_code()


def test_run_and_result_frames_are_byte_for_byte_those_of_before() -> None:
    """The data frames did not change with the typed control messages (#29)."""
    run = wire.encode_run(7, "m", [item([101, 5, 102], type_id=1)], 1.5, low=True)
    assert run == bytes.fromhex(
        "28000000" "0107000000" "000000000000f83f" "0100" "01000000" "01" "6d" "03000000"
        "65000000" "05000000" "66000000" "010101"
    )  # fmt: skip
    result = wire.encode_result(9, np.array([[1.0, -2.0]], dtype=np.float32), 0.25, 0.5)
    assert result == bytes.fromhex(
        "26000000" "0409000000" "000000000000d03f" "000000000000e03f" "02" "01000000"
        "02000000" "0000803f" "000000c0"
    )  # fmt: skip


# -- control messages: typed, validated on arrival ----------------------------


async def test_control_messages_survive_the_trip() -> None:
    kind, request_id, payload = await read(wire.encode_call(4, control.GetStatus()))
    assert (kind, request_id, wire.decode_call(payload)) == (wire.CALL, 4, control.GetStatus())
    kind, _, payload = await read(wire.encode_call(5, control.Describe()))
    assert wire.decode_call(payload) == control.Describe()
    status = control.Status("the engine process is warming up")
    kind, _, payload = await read(wire.encode_reply(4, status))
    assert (kind, wire.decode_reply(payload)) == (wire.REPLY, status)
    kind, request_id, payload = await read(wire.encode_hello(control.THIS_BUILD))
    assert (kind, request_id) == (wire.HELLO, 0)
    assert wire.decode_hello(payload) == control.THIS_BUILD


def test_a_model_description_arrives_as_one() -> None:
    description = control.Description([MODEL])
    decoded = wire.decode_reply(memoryview(wire.encode_reply(1, description))[9:])
    assert decoded == description and isinstance(decoded, control.Description)
    assert isinstance(decoded.models[0], ModelDescription)
    # Which model is its task's default travels too (a worker's GET /models says it).
    marked = control.Description([dataclasses.replace(MODEL, default=True)])
    decoded = wire.decode_reply(memoryview(wire.encode_reply(1, marked))[9:])
    assert isinstance(decoded, control.Description) and decoded.models[0].default is True


MODEL = ModelDescription(
    name="minilm", task="embedding", source="sentence-transformers/all-MiniLM-L6-v2",
    labels=[], dimensions=384, max_length=512, pooling="mean", backend="onnx",
    device="cpu", precision="fp32", instances=1, max_batch_size=64,
    max_batch_tokens=16384, max_queue=1024, tokenization_workers=2, attention=True,
)  # fmt: skip


@pytest.mark.parametrize(
    ("decode", "payload", "problem"),
    [
        (wire.decode_call, b'{"op": "reboot"}', "malformed CALL message: Input tag 'reboot'"),
        (wire.decode_call, b"{}", "malformed CALL message: Unable to extract tag"),
        (wire.decode_call, b'["describe"]', "malformed CALL message: Input should be an obj"),
        (wire.decode_call, b"describe", "malformed CALL message: Invalid JSON"),
        (wire.decode_call, b'{"op": "status", "x": 1}', "CALL message: status.x: Unexpected"),
        (wire.decode_reply, b'{"op": "status"}', "REPLY message: status.not_ready: Field required"),
        (wire.decode_reply, b'{"op": "status", "not_ready": 0}', "not_ready: Input should be"),
        (wire.decode_hello, b'{"package": "0.1.0"}', "HELLO message: protocol: Field required"),
        (wire.decode_hello, b'{"package": "0.1.0", "protocol": "1"}', "protocol: Input should"),
    ],
)
def test_a_malformed_or_unknown_control_message_is_refused_in_one_line(
    decode: Callable[[memoryview], object], payload: bytes, problem: str
) -> None:
    with pytest.raises(wire.WireError) as refused:
        decode(memoryview(payload))
    assert problem in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("dimensions", "384", "describe.models.0.dimensions: Input should be a valid integer"),
        ("task", "translation", "describe.models.0.task: Input should be 'embedding'"),
        ("attention", 1, "describe.models.0.attention: Input should be a valid boolean"),
        ("colour", "blue", "describe.models.0.colour: Unexpected keyword argument"),
    ],
)
def test_a_model_description_is_checked_field_by_field(
    field: str, value: object, problem: str
) -> None:
    model = {**dataclasses.asdict(MODEL), field: value}
    payload = json.dumps({"op": "describe", "models": [model]}).encode()
    with pytest.raises(wire.WireError, match=re.escape(f"malformed REPLY message: {problem}")):
        wire.decode_reply(memoryview(payload))


async def test_an_error_whose_text_utf8_cannot_carry_still_travels() -> None:
    _, _, payload = await read(wire.encode_error(2, errors.InferenceFailed("bad \udc80 byte")))
    assert str(wire.decode_error(payload)) == "bad \\udc80 byte"


def test_a_malformed_error_frame_is_refused() -> None:
    payload = struct.pack("<I", 0) + b'{"type": "Overloaded"}'
    with pytest.raises(wire.WireError, match="malformed ERROR message: message: Field required"):
        wire.decode_error(memoryview(payload))


def test_builds_that_differ_in_package_or_protocol_do_not_match() -> None:
    this = control.THIS_BUILD
    assert control.mismatch(this, control.Build(this.package, this.protocol)) is None
    for other in [control.Build("0.0.1", this.protocol), control.Build(this.package, 99)]:
        line = control.mismatch(worker=other, engine=this)
        assert line is not None and "\n" not in line
        assert f"HTTP worker runs {other}" in line and f"engine process {this}" in line
