"""The handshake and the control messages against the real engine-side server (the
`minilm` engine behind `serve_engine` on a Unix socket): a worker of another build is
refused and told why in one line naming both versions, on both sides; a connection that
does not open with HELLO, or sends a malformed control message, is closed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app import __version__
from app.api.lifecycle import ServerState
from app.config import Settings
from app.engine.in_process import InProcessEngine
from app.engine.transport import control, wire
from app.engine.transport.client import EngineLink, RemoteEngine
from app.engine.transport.server import serve_engine
from app.metrics import Metrics

THIS = f"encoder-serve {__version__} (wire protocol {control.PROTOCOL})"


def settings(models: Path) -> Settings:
    return Settings(models_dir=models, models=["minilm"], instances=1, warmup=False)


@contextlib.asynccontextmanager
async def engine_serving(models: Path, tmp_path: Path) -> AsyncIterator[Path]:
    local = await asyncio.to_thread(InProcessEngine.load, settings(models), None, warm_up=False)
    path, stop, ready = tmp_path / "engine.sock", asyncio.Event(), asyncio.Event()
    serving = asyncio.create_task(serve_engine(local, path, 5.0, stop, ready.set))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield path
    finally:
        stop.set()
        await serving


async def connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(str(path))


async def closed_by_the_engine(reader: asyncio.StreamReader) -> bool:
    try:
        await asyncio.wait_for(wire.read_frame(reader), 5)
    except asyncio.IncompleteReadError:
        return True
    return False


@pytest.mark.parametrize(
    "other",
    [control.Build("0.0.1", control.PROTOCOL), control.Build(__version__, control.PROTOCOL + 1)],
    ids=["package", "protocol"],
)
async def test_a_worker_of_another_build_is_refused_in_one_line_naming_both(
    default_models: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, other: control.Build
) -> None:
    async with engine_serving(default_models, tmp_path) as path:
        link = EngineLink(path, build=other)
        with caplog.at_level(logging.ERROR), pytest.raises(control.VersionMismatch) as refused:
            await asyncio.wait_for(link.run(), 10)  # the link ends: it does not reconnect
        line = str(refused.value)
        assert line == (
            f"version mismatch: the HTTP worker runs {other}, the engine process {THIS}; "
            "both must come from one build (restart the server)"
        )
        assert not link.connected
        engine_said = [
            r.getMessage() for r in caplog.records if r.name == "app.engine.transport.server"
        ]
        assert engine_said == [f"refused a worker: {line}"]
        # On the socket: the engine answers HELLO with its own build, then closes.
        reader, writer = await connect(path)
        writer.write(wire.encode_hello(other))
        kind, _, payload = await wire.read_frame(reader)
        assert (kind, wire.decode_hello(payload)) == (wire.HELLO, control.THIS_BUILD)
        assert await closed_by_the_engine(reader)
        writer.close()


async def test_a_worker_whose_engine_is_of_another_build_stops_with_an_error(
    default_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's start-up path (ServerState.load -> RemoteEngine.start): the server is
    asked to stop and `fatal_error` is set, so the worker process exits with code 1."""
    async with engine_serving(default_models, tmp_path) as path:
        engine_build = control.Build("9.9.9", control.PROTOCOL)
        # Read by the engine side per connection; the worker's link keeps its own build.
        monkeypatch.setattr(control, "THIS_BUILD", engine_build)
        state = ServerState(settings(default_models), Metrics(), engine_socket=path)
        stops: list[bool] = []
        state.request_shutdown = lambda: stops.append(True)
        await asyncio.wait_for(state.load(), 30)
        assert isinstance(state.fatal_error, control.VersionMismatch)
        assert f"runs {THIS}, the engine process {engine_build};" in str(state.fatal_error)
        assert stops == [True] and not state.ready


async def test_an_engine_of_another_build_taking_over_ends_a_started_worker(
    default_models: Path, tmp_path: Path
) -> None:
    """After start: the engine process is replaced by one of another build (here a bare
    socket that answers HELLO as a 9.9.9 engine would): `on_fatal` gets the mismatch."""
    fatal: list[Exception] = []
    async with engine_serving(default_models, tmp_path) as path:
        remote = await asyncio.to_thread(
            RemoteEngine.load, settings(default_models), None, path, fatal.append
        )
        await asyncio.wait_for(remote.start(), 30)
        assert remote.not_ready() is None
    assert remote.not_ready() is not None  # the engine went away

    async def other_build(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await wire.read_frame(reader)
        writer.write(wire.encode_hello(control.Build("9.9.9", control.PROTOCOL)))
        writer.close()

    server = await asyncio.start_unix_server(other_build, str(path))
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while not fatal:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
    finally:
        server.close()
        await remote.close()
    assert isinstance(fatal[0], control.VersionMismatch)
    assert remote.not_ready() == str(fatal[0]) and "9.9.9" in str(fatal[0])


async def test_connections_that_break_the_control_protocol_are_closed(
    default_models: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with engine_serving(default_models, tmp_path) as path:
        with caplog.at_level(logging.ERROR, logger="app.engine.transport.server"):
            # A worker of a build from before the handshake: it opens with a CALL.
            reader, writer = await connect(path)
            writer.write(wire.encode_call(1, control.Describe()))
            assert await closed_by_the_engine(reader)
            writer.close()
            # A malformed control message after a good handshake.
            reader, writer = await connect(path)
            writer.write(wire.encode_hello(control.THIS_BUILD))
            assert (await wire.read_frame(reader))[0] == wire.HELLO
            body = bytes([wire.CALL]) + (2).to_bytes(4, "little") + b'{"op": "reboot"}'
            writer.write(len(body).to_bytes(4, "little") + body)
            assert await closed_by_the_engine(reader)
            writer.close()
            # A good one is answered, typed.
            reader, writer = await connect(path)
            writer.write(wire.encode_hello(control.THIS_BUILD))
            await wire.read_frame(reader)
            writer.write(wire.encode_call(3, control.Describe()))
            kind, request_id, payload = await wire.read_frame(reader)
            reply = wire.decode_reply(payload)
            assert (kind, request_id) == (wire.REPLY, 3) and isinstance(reply, control.Description)
            assert [model.name for model in reply.models] == ["minilm"]
            writer.close()
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "closing a worker connection: the connection opened with a frame of kind 3, not HELLO",
        "closing a worker connection: malformed CALL message: Input tag 'reboot' found using "
        "'op' does not match any of the expected tags: 'describe', 'status'",
    ]
