"""The engine process: every model's sessions and batchers, served to the front-end
workers over a Unix socket (frames: app/engine/transport/wire.py; the workers' side:
app/engine/transport/client.py).

Each worker holds one connection and multiplexes its requests over it by id, after the
handshake of app/engine/transport/control.py (a worker of another build is refused). A request
runs as a task here, so deadlines, admission (429), fairness across requests and
cancellation work exactly as in one process; a worker that disconnects takes its
queued inputs with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import sys
from collections.abc import Callable
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, assert_never

import numpy as np

from app.config import Settings
from app.engine.errors import EngineError, InferenceFailed, ModelNotFound, NotReady
from app.engine.in_process import InProcessEngine
from app.engine.timing import RequestTiming, current_timing
from app.engine.transport import control, wire

log = logging.getLogger(__name__)

# At shutdown, how long answered requests may take to reach their workers' sockets.
ANSWER_WRITE_S = 5.0


def _forget(tasks: dict[int, asyncio.Task[None]], request_id: int, _: object) -> None:
    tasks.pop(request_id, None)


class EngineService:
    """Answers the frames of worker connections from an in-process engine."""

    def __init__(self, engine: InProcessEngine) -> None:
        self._engine = engine
        # By name: a model's (behind the result cache when on), `<model>-attention` and
        # `<model>-tokens`.
        self._services = {
            batcher.name: runner.service(batcher.name)
            for runner in engine.registry.runners.values()
            for batcher in runner.batchers
        }
        self.draining = False
        # Each worker connection, with its requests' tasks by request id.
        self._connections: dict[wire.FrameWriter, dict[int, asyncio.Task[None]]] = {}

    async def finish_answers(self, timeout_s: float) -> None:
        """Wait until every request whose passes ran has its answer written (at shutdown,
        after the batchers drained: their tasks still have to wake up and send)."""
        running = {task for tasks in self._connections.values() for task in tasks.values()}
        if running:
            await asyncio.wait(running, timeout=timeout_s)

    def close_connections(self) -> None:
        """Close every worker connection, after sending the frames written so far."""
        for writer in self._connections:
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, stream: asyncio.StreamWriter) -> None:
        writer = wire.FrameWriter(stream)
        tasks = self._connections[writer] = {}
        try:
            if not await self._handshake(reader, writer):
                return
            while True:
                kind, request_id, payload = await wire.read_frame(reader)
                if kind == wire.RUN:
                    task = asyncio.create_task(self._run(request_id, payload, writer))
                    tasks[request_id] = task
                    task.add_done_callback(functools.partial(_forget, tasks, request_id))
                elif kind == wire.CANCEL:
                    running = tasks.get(request_id)
                    if running is not None:
                        running.cancel()
                elif kind == wire.CALL:
                    reply = self._call(wire.decode_call(payload))
                    writer.write(wire.encode_reply(request_id, reply))
                else:
                    raise wire.WireError(f"unexpected frame kind {kind}")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker went away: its requests are cancelled below
        except wire.WireError as error:
            log.error("closing a worker connection: %s", error)
        finally:
            for task in list(tasks.values()):
                task.cancel()
            del self._connections[writer]
            writer.close()

    @staticmethod
    async def _handshake(reader: asyncio.StreamReader, writer: wire.FrameWriter) -> bool:
        """Exchange builds with a new connection; False (logged) if it is to be refused."""
        kind, _, payload = await wire.read_frame(reader)
        if kind != wire.HELLO:  # a worker of a build from before the handshake
            raise wire.WireError(f"the connection opened with a frame of kind {kind}, not HELLO")
        worker = wire.decode_hello(payload)
        writer.write(wire.encode_hello(control.THIS_BUILD))  # the worker says why, too
        problem = control.mismatch(worker=worker, engine=control.THIS_BUILD)
        if problem is not None:
            log.error("refused a worker: %s", problem)
            return False
        return True

    async def _run(self, request_id: int, payload: memoryview, writer: wire.FrameWriter) -> None:
        timing = RequestTiming()
        current_timing.set(timing)  # this task's own context: what the batcher records
        try:
            request = wire.decode_run(payload)
            batcher = self._services.get(request.service)
            if batcher is None:
                raise ModelNotFound(f"the engine process serves no model '{request.service}'")
            if self.draining:
                raise NotReady("the server is shutting down; send new requests to another replica")
            results = await batcher.process(
                [(item, item.tokens) for item in request.items],
                request.timeout_s,
                low=request.low,
            )
            frame = wire.encode_result(
                request_id, np.stack(results), timing.queue_s, timing.inference_s
            )
        except EngineError as error:
            frame = wire.encode_error(request_id, error)
        except Exception as error:  # a bug: the caller still gets an answer
            log.exception("engine request failed")
            frame = wire.encode_error(request_id, InferenceFailed(f"engine error: {error!r}"))
        if not writer.is_closing():
            writer.write(frame)
            with contextlib.suppress(ConnectionError):
                await writer.drain()  # backpressure: a worker that stops reading

    def _call(self, call: control.Call) -> control.Reply:
        match call:
            case control.Describe():
                return control.Description(self._engine.models())
            case control.GetStatus():
                reason = "draining: the server is shutting down" if self.draining else None
                return control.Status(reason or self._engine.not_ready())
            case _:
                assert_never(call)


async def serve_engine(
    engine: InProcessEngine,
    path: Path,
    drain_s: float,
    stop: asyncio.Event,
    on_ready: Callable[[], None] = lambda: None,
) -> None:
    """Serve `engine` on the Unix socket `path` until `stop` is set, then drain and stop."""
    await engine.start()
    service = EngineService(engine)
    path.unlink(missing_ok=True)
    server = await asyncio.start_unix_server(service.handle, str(path))
    log.info("engine process ready: serving %s", ", ".join(m.name for m in engine.models()))
    on_ready()
    await stop.wait()
    # The supervisor stops the workers first, so what is queued now is what they still
    # wait for; new passes are refused only after it is done.
    if not await engine.drain(drain_s):
        log.warning("engine drain: work still queued after %g s; it fails now", drain_s)
    await service.finish_answers(ANSWER_WRITE_S)
    service.draining = True
    server.close()
    service.close_connections()
    await engine.close()


async def _serve_until_sigterm(
    engine: InProcessEngine, path: Path, drain_s: float, ready: Event
) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await serve_engine(engine, path, drain_s, stop, ready.set)


def run_engine_process(settings: Settings, path: Path, ready: Event) -> None:
    """The engine process's main: load and warm every model, then serve (blocking)."""
    from app.logs import configure_logging
    from app.metrics import Metrics
    from app.runtime_files import write_engine_error

    configure_logging(settings.log_level, settings.log_format)
    # Ctrl-C reaches the whole process group; the supervisor decides the order of shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        engine = InProcessEngine.load(settings, Metrics(), warm_up=settings.warmup)
        gc.collect()
        gc.freeze()  # see ServerState.load: what is loaded lives as long as the process
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_serve_until_sigterm(engine, path, settings.drain_s, ready))
    except Exception as error:
        if ready.is_set():
            raise  # a bug while serving: its traceback, exit code 1
        # A start-up failure (a model that cannot load): one line in the log, and for the
        # supervisor, which says why in its log and in every worker's /ready.
        log.error("engine start-up failed: %s", error)
        write_engine_error(path.parent, error)
        sys.exit(1)


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (uvicorn's standard extra brings it)
        return None
    return uvloop.new_event_loop
