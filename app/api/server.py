"""The HTTP server process: uvicorn with a drain phase on SIGTERM before its own shutdown."""

from __future__ import annotations

import asyncio
import socket
from types import FrameType

import uvicorn

from app.api.connections import ConnectionLimits, GuardedHttpToolsProtocol, raise_open_files_limit
from app.api.lifecycle import ServerState


class DrainingServer(uvicorn.Server):
    """On the first SIGTERM (or SIGINT), drain before shutting down.

    Draining turns /ready and new requests to 503 — so a load balancer stops sending
    traffic — while queued and running work finishes within `drain_s`. Then uvicorn's
    graceful shutdown runs. A second signal skips the wait.
    """

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state
        self._draining = False  # the first signal came; a second one skips the wait
        # A model that fails to load stops start-up: the app asks the server to exit.
        state.request_shutdown = lambda: setattr(self, "should_exit", True)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self.should_exit:
            super().handle_exit(sig, frame)
            return
        loop = asyncio.get_event_loop()
        # Called from a signal handler: schedule through the loop's thread-safe door.
        self._draining = True
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain_then_exit(sig, frame)))

    async def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        await self.state.drain()
        super().handle_exit(sig, frame)


def serve(app_state: ServerState, app: object, sockets: list[socket.socket] | None = None) -> None:
    """Run the HTTP server until it is stopped: on the settings' host and port, or on
    `sockets` already bound (a front-end worker's share of the supervisor's socket)."""
    settings = app_state.settings
    limits = ConnectionLimits(
        max_header_bytes=settings.max_header_bytes,
        read_timeout_s=settings.read_timeout_s,
        max_connections=settings.max_connections,
    )
    # The cap is only worth its 503 if accept() does not fail on descriptors first.
    raise_open_files_limit(limits.max_connections)
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        # httptools (uvicorn's fastest parser) with bounds on headers, read time and
        # connections; uvicorn itself has none of them for httptools.
        http=GuardedHttpToolsProtocol.with_limits(limits),
        log_config=None,
        access_log=settings.access_log,
        # Work was drained already; connections get as long again to send their answers.
        timeout_graceful_shutdown=max(int(settings.drain_s), 1),
        # Longer than clients and load balancers keep idle connections (httpx 5 s, nginx
        # 60 s), so they close first: when the server closes one as a client sends on
        # it, that request fails (uvicorn's default of 5 s raced httpx's 5 s expiry).
        timeout_keep_alive=settings.keep_alive_s,
    )
    DrainingServer(config, app_state).run(sockets=sockets)
