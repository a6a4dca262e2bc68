"""The HTTP server process: uvicorn with a drain phase on SIGTERM before its own shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from types import FrameType

import uvicorn

from app.api.connections import ConnectionLimits, GuardedHttpToolsProtocol, raise_open_files_limit
from app.api.lifecycle import ServerState


# Overrides uvicorn.Server's handle_exit and shutdown and reads its servers, lifespan and
# server_state, beyond uvicorn's documented API: checked by name in
# tests/unit/test_uvicorn_members.py (uvicorn is pinned to the versions that test passed on).
class DrainingServer(uvicorn.Server):
    """On the first SIGTERM (or SIGINT), drain before shutting down.

    Draining turns /ready and new requests to 503 — so a load balancer stops sending
    traffic — while queued and running work finishes within `drain_s`. Then uvicorn's
    graceful shutdown runs. A second signal skips the wait.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        state: ServerState,
        protocol: type[GuardedHttpToolsProtocol],
    ) -> None:
        super().__init__(config)
        self.state = state
        self.protocol = protocol
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
        # From now on every answer closes its connection (Connection: close): clients
        # move their next request to another replica instead of finding this one closed.
        self.protocol.shared.draining = True
        await self.state.drain()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown, with the connections the kernel has queued but nobody
        accepted yet taken in first (answered 503 with Connection: close): closing the
        listening socket with them queued would reset their requests unanswered."""
        self.protocol.shared.draining = True
        self.protocol.shared.shutting_down = True
        loop = asyncio.get_running_loop()
        factory = functools.partial(
            self.protocol,
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )
        for connection in _accept_queued(self.servers):
            with contextlib.suppress(OSError):
                await loop.connect_accepted_socket(factory, connection)
        await super().shutdown(sockets)  # shuts each connection down, waits for them


def _accept_queued(servers: list[asyncio.Server]) -> list[socket.socket]:
    """Every connection waiting in the listening sockets' queues, accepted now, and the
    listening sockets closed right after (within microseconds, so a new one can hardly
    slip in between). With several workers each holds a copy of the socket: the last to
    close it ends the listening."""
    copies = [
        socket.socket(fileno=os.dup(listening.fileno()))
        for server in servers
        for listening in server.sockets
    ]
    for server in servers:
        server.close()  # no more accepts by the loop; the copies keep the sockets listening
    accepted: list[socket.socket] = []
    for copy in copies:
        copy.setblocking(False)
        try:
            while True:
                connection, _ = copy.accept()
                accepted.append(connection)
        except OSError:  # BlockingIOError once the queue is empty
            pass
        finally:
            copy.close()
    return accepted


def serve(app_state: ServerState, app: object, sockets: list[socket.socket] | None = None) -> None:
    """Run the HTTP server until it is stopped: on the settings' host and port, or on
    `sockets` already bound (a front-end worker's share of the supervisor's socket)."""
    settings = app_state.settings
    limits = ConnectionLimits(
        max_header_bytes=settings.max_header_bytes,
        read_timeout_s=settings.read_timeout_s,
        max_connections=settings.max_connections,
        write_timeout_s=settings.write_timeout_s,
        max_unsent_bytes=settings.max_unsent_bytes,
    )
    # The cap is only worth its 503 if accept() does not fail on descriptors first.
    raise_open_files_limit(limits.max_connections)
    protocol = GuardedHttpToolsProtocol.with_limits(limits)
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        # httptools (uvicorn's fastest parser) with bounds on headers, read time and
        # connections; uvicorn itself has none of them for httptools.
        http=protocol,
        log_config=None,
        access_log=settings.access_log,
        # Work was drained already; connections get as long again to send their answers.
        timeout_graceful_shutdown=max(int(settings.drain_s), 1),
        # Longer than clients and load balancers keep idle connections (httpx 5 s, nginx
        # 60 s), so they close first: when the server closes one as a client sends on
        # it, that request fails (uvicorn's default of 5 s raced httpx's 5 s expiry).
        timeout_keep_alive=settings.keep_alive_s,
    )
    DrainingServer(config, app_state, protocol).run(sockets=sockets)
