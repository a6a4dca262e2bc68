"""A front-end worker's engine: requests are tokenized here, their passes run in the
engine process (`server.py` beside this), reached over a Unix socket (`wire.py`).

The worker loads tokenizers and heads, not sessions; each model's batch service is a
`RemoteBatches` that sends token ids and awaits vectors. Deadlines, admission (429) and
queueing stay in the engine process's batchers; a request cancelled here (the client
went away) is cancelled there too. When the engine process stops, every waiting request
fails at once with NotReady (503) and the link reconnects until a new one answers.
Each connection opens with the handshake of `control.py`: an engine process of another
build ends the link for good, and with it the worker (`RemoteEngine.start`
raises, or `on_fatal` is called).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from app.config import Settings
from app.engine.contract import ModelDescription
from app.engine.errors import NotReady
from app.engine.models.engine import RegistryEngine, tokenization_threads
from app.engine.models.registry import ModelRegistry
from app.engine.models.tokenization import TokenizedText
from app.engine.timing import current_timing
from app.engine.transport import control, wire
from app.metrics import Metrics

log = logging.getLogger(__name__)

RECONNECT_S = 0.2  # between attempts to reach a (re)starting engine process
STATUS_EVERY_S = 0.5  # how often a worker asks the engine process whether it is ready
# The engine answers by each request's deadline; past it by this much, the engine is stuck.
ANSWER_GRACE_S = 5.0
NOT_RUNNING = "the engine process is not running (it is being restarted); retry shortly"

R = TypeVar("R")


class EngineLink:
    """One worker's connection to the engine process: requests multiplexed by id."""

    def __init__(self, path: Path, build: control.Build = control.THIS_BUILD) -> None:
        self.path = path
        self.build = build  # what this worker says it runs, in each connection's HELLO
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._writer: wire.FrameWriter | None = None

    @property
    def connected(self) -> bool:
        return self._writer is not None

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def run(self) -> None:
        """Connect, answer frames until the engine goes away, reconnect; until cancelled,
        or until an engine process of another build answers (VersionMismatch)."""
        while True:
            try:
                reader, stream = await asyncio.open_unix_connection(str(self.path))
            except OSError:
                await asyncio.sleep(RECONNECT_S)
                continue
            writer = wire.FrameWriter(stream)
            try:
                await self._handshake(reader, writer)
                self._writer = writer
                log.info("connected to the engine process")
                await self._read(reader)
            except (
                asyncio.IncompleteReadError,
                ConnectionError,
                TimeoutError,
                wire.WireError,
            ) as error:
                log.warning("lost the engine process (%s); reconnecting", type(error).__name__)
            finally:
                self._writer = None
                writer.close()
                for future in self._pending.values():
                    if not future.done():
                        future.set_exception(NotReady(NOT_RUNNING))
                self._pending.clear()
            await asyncio.sleep(RECONNECT_S)  # an engine that closes at once: no busy loop

    async def _handshake(self, reader: asyncio.StreamReader, writer: wire.FrameWriter) -> None:
        """Exchange builds; VersionMismatch if the engine process runs another one."""
        writer.write(wire.encode_hello(self.build))
        async with asyncio.timeout(ANSWER_GRACE_S):
            kind, _, payload = await wire.read_frame(reader)
        if kind != wire.HELLO:
            raise wire.WireError(f"the engine process answered HELLO with a frame of kind {kind}")
        problem = control.mismatch(worker=self.build, engine=wire.decode_hello(payload))
        if problem is not None:
            raise control.VersionMismatch(problem)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        decoders: dict[int, Callable[[memoryview], Any]] = {
            wire.RESULT: wire.decode_result,
            wire.ERROR: wire.decode_error,
            wire.REPLY: wire.decode_reply,
        }
        while True:
            kind, request_id, payload = await wire.read_frame(reader)
            future = self._pending.pop(request_id, None)
            try:
                if kind not in decoders:
                    raise wire.WireError(f"unexpected frame kind {kind}")
                answer = decoders[kind](payload)
            except Exception as error:
                # A frame we cannot read is a protocol bug: fail its caller now (not at
                # its timeout) and reconnect, failing the others, rather than guess.
                if future is not None and not future.done():
                    future.set_exception(NotReady(f"unreadable answer from the engine: {error}"))
                raise wire.WireError(f"unreadable frame of kind {kind}: {error}") from error
            if future is None or future.done():
                continue  # cancelled here meanwhile
            if isinstance(answer, BaseException):  # an ERROR frame
                future.set_exception(answer)
            else:
                future.set_result(answer)

    async def _ask(self, frame: bytes, request_id: int, wait_s: float) -> Any:
        writer = self._writer
        if writer is None:
            raise NotReady(NOT_RUNNING)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        writer.write(frame)
        try:
            async with asyncio.timeout(wait_s):
                await writer.drain()  # backpressure: an engine that stops reading
                return await future
        except TimeoutError:
            raise NotReady("the engine process did not answer in time") from None
        except ConnectionError:  # lost while sending
            raise NotReady(NOT_RUNNING) from None
        except asyncio.CancelledError:
            if self._writer is writer and self._pending.pop(request_id, None) is not None:
                writer.write(wire.encode_cancel(request_id))
            raise
        finally:
            self._pending.pop(request_id, None)

    async def run_batch(
        self, service: str, items: list[TokenizedText], timeout_s: float, *, low: bool = False
    ) -> wire.RunResult:
        request_id = next(self._ids)
        frame = wire.encode_run(request_id, service, items, timeout_s, low=low)
        result: wire.RunResult = await self._ask(
            frame, request_id, max(timeout_s, 0.0) + ANSWER_GRACE_S
        )
        return result

    async def describe(self) -> list[ModelDescription]:
        """Every model the engine process serves."""
        reply = await self._call(control.Describe(), control.Description, ANSWER_GRACE_S)
        return reply.models

    async def status(self, wait_s: float) -> str | None:
        """Why the engine process cannot serve now, or None when it can."""
        reply = await self._call(control.GetStatus(), control.Status, wait_s)
        return reply.not_ready

    async def _call(self, call: control.Call, answer: type[R], wait_s: float) -> R:
        request_id = next(self._ids)
        reply = await self._ask(wire.encode_call(request_id, call), request_id, wait_s)
        if not isinstance(reply, answer):  # a reply to another call: a bug of the engine's
            raise NotReady(f"the engine process answered {call.op!r} with {reply!r}")
        return reply


class RemoteBatches:
    """A model's batch service in the engine process (`app.engine.batcher.BatchService`)."""

    def __init__(self, link: EngineLink, service: str) -> None:
        self._link = link
        self._service = service

    async def process(
        self, payloads: Sequence[tuple[TokenizedText, int]], timeout_s: float, *, low: bool = False
    ) -> list[np.ndarray]:
        items = [item for item, _ in payloads]
        result = await self._link.run_batch(self._service, items, timeout_s, low=low)
        timing = current_timing.get()
        if timing is not None:
            timing.record(
                result.queue_s, result.inference_s, len(items), sum(p[1] for p in payloads)
            )
        return list(result.values)


class RemoteEngine(RegistryEngine):
    """Implements `app.engine.contract.Engine` with the passes in the engine process."""

    def __init__(
        self,
        *args: Any,
        link: EngineLink,
        on_fatal: Callable[[Exception], None] | None = None,
    ) -> None:
        super().__init__(*args)
        self._link = link
        self._on_fatal = on_fatal
        self._tasks: list[asyncio.Task[None]] = []
        self._status: str | None = NOT_RUNNING
        self._link_error: str | None = None  # why the link ended for good

    @classmethod
    def load(
        cls,
        settings: Settings,
        metrics: Metrics | None,
        path: Path,
        on_fatal: Callable[[Exception], None] | None = None,
    ) -> RemoteEngine:
        """Tokenizers and heads (blocking); the descriptions come from the engine in `start`.
        `on_fatal` is called if the link ends for good after `start` (an engine process
        of another build took over): the worker cannot serve any more and should exit."""
        link = EngineLink(path)
        executor = ThreadPoolExecutor(tokenization_threads(), thread_name_prefix="tokenize")
        try:
            registry = ModelRegistry.load(
                settings,
                metrics,
                executor,
                remote=lambda service: RemoteBatches(link, service),
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(registry, {}, executor, link=link, on_fatal=on_fatal)

    async def start(self) -> None:
        """Connect, and wait until the engine process (loading its models) describes them;
        VersionMismatch if it runs another build."""
        link = asyncio.create_task(self._link.run())
        self._tasks = [link]
        while True:
            if link.done():
                link.result()  # raises why the link ended: an engine of another build
            if self._link.connected:
                try:
                    models = await self._link.describe()
                    break
                except NotReady:
                    pass
            await asyncio.sleep(RECONNECT_S)
        self._descriptions = {model.name: model for model in models}
        await self._refresh_status()
        self._tasks.append(asyncio.create_task(self._watch()))
        link.add_done_callback(self._link_ended)

    def _link_ended(self, link: asyncio.Task[None]) -> None:
        error = None if link.cancelled() else link.exception()
        if isinstance(error, Exception):
            self._link_error = str(error)
            if self._on_fatal is not None:
                self._on_fatal(error)

    async def _watch(self) -> None:
        """Keep `not_ready` current: the engine's own answer, or why there is none."""
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            await self._refresh_status()

    async def _refresh_status(self) -> None:
        try:
            self._status = await self._link.status(STATUS_EVERY_S * 4)
        except NotReady as error:
            self._status = str(error)

    def not_ready(self) -> str | None:
        if self._link_error is not None:
            return self._link_error
        return self._status if self._link.connected else NOT_RUNNING

    async def drain(self, timeout_s: float) -> bool:
        """Wait until this worker's requests are answered (the engine drains its own)."""
        deadline = time.monotonic() + timeout_s
        while self._link.pending:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        # The link's own error, if it ended with one, was raised by `start` or given to
        # `on_fatal` already.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tokenize_executor.shutdown(wait=False, cancel_futures=True)
