"""Server lifecycle: load and warm models off the event loop, report readiness, shut down."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from pathlib import Path

from app.api.schemas import RequestLimits
from app.config import Settings
from app.engine.contract import Engine
from app.engine.errors import NotReady
from app.engine.wiring import load_engine
from app.metrics import Metrics
from app.worker_board import SERVING, WAITING, WorkerBoard

log = logging.getLogger(__name__)


class ServerState:
    """What the routes need to know about the server: its engine and whether it is ready."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        engine_socket: Path | None = None,
        board: WorkerBoard | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine_socket = engine_socket  # set in a front-end worker: the engine process
        # Set in a front-end worker: what its siblings would answer (app/worker_board.py).
        self.board = board
        # What the request validators enforce: derived from the settings once, not per request.
        self.request_limits = RequestLimits.of(settings)
        self._engine: Engine | None = None
        self.draining = False
        self.fatal_error: Exception | None = None
        # Set by the command line: asks the HTTP server to exit (a model failed to load).
        self.request_shutdown: Callable[[], None] | None = None

    @property
    def ready(self) -> bool:
        """This process would answer, and so would every sibling worker that accepts
        connections: the next request may reach any of them."""
        engine = self._engine
        if engine is None or self.draining or engine.not_ready() is not None:
            return False
        return self.board is None or not self.board.waiting()

    def accepting(self) -> None:
        """Called as a front-end worker starts accepting connections: one that cannot
        serve yet (the engine process still loading) holds its siblings' /ready back."""
        if self.board is not None and (self._engine is None or self.draining):
            self.board.mark(WAITING)

    @property
    def engine(self) -> Engine:
        """The loaded engine; NotReady (503) while models are still loading or while draining."""
        if self.draining:
            raise NotReady("the server is shutting down; send new requests to another replica")
        if self._engine is None:
            raise NotReady("models are still loading; retry when GET /ready answers 200")
        return self._engine

    def not_ready_reason(self) -> str:
        if self.draining:
            return "draining: the server is shutting down"
        reason = "models are still loading" if self._engine is None else self._engine.not_ready()
        if reason is None:
            waiting = None if self.board is None else self.board.describe_waiting()
            return waiting or "ready"
        if self.engine_socket is not None:  # why the engine process is down, if it failed
            from app.runtime_files import engine_down_reason

            failure = engine_down_reason(self.engine_socket.parent)
            if failure is not None:
                return f"{reason}; {failure}"
        return reason

    async def load(self) -> None:
        """Load and warm every model; on failure record the error and stop the server."""
        try:
            engine = await asyncio.to_thread(
                load_engine,
                self.settings,
                self.metrics,
                warm_up=self.settings.warmup,
                engine_socket=self.engine_socket,
                on_fatal=self.fail,
            )
        except Exception as error:
            self.fail(error)
            return
        # What is loaded now lives as long as the server: take it out of the collector's
        # sight. Otherwise each full collection walks every model and library object,
        # stalling the event loop and the batch worker ~100 ms (measured at 32 clients:
        # two such pauses in 15 s, which set the p99).
        gc.collect()
        gc.freeze()
        try:
            await engine.start()
        except asyncio.CancelledError:  # shut down while a worker waited for the engine
            await engine.close()
            raise
        except Exception as error:  # an engine process of another build
            await engine.close()
            self.fail(error)
            return
        self._engine = engine
        if self.board is not None and not self.draining:
            self.board.mark(SERVING)
        log.info("ready: serving %s", ", ".join(model.name for model in engine.models()))

    def fail(self, error: Exception) -> None:
        """The server cannot serve (a model failed to load, an engine process of another
        build): record why, and stop the server (a worker then exits with an error)."""
        self.fatal_error = error
        log.error("start-up failed: %s" if self._engine is None else "stopping: %s", error)
        if self.request_shutdown is not None:
            self.request_shutdown()

    async def drain(self) -> None:
        """Refuse new work (503, /ready too) and wait up to `drain_s` for queued work to finish."""
        self.draining = True
        if self.board is not None:
            self.board.mark(WAITING)  # the siblings' /ready say 503 from now on too
        log.info("draining: waiting up to %g s for queued work", self.settings.drain_s)
        if self._engine is not None and not await self._engine.drain(self.settings.drain_s):
            log.warning("drain: work still queued after %g s; it fails now", self.settings.drain_s)
            return
        log.info("drained")

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.close()
