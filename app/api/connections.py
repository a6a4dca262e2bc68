"""Connection hygiene for uvicorn's httptools protocol: header size limit, read timeout, cap."""

# Why one file (over 400 lines): one class, uvicorn's protocol with its bounds; its read
# timer, flow control, refusals and shutdown share one connection's state and are read together.
#
# uvicorn has no public hooks for these bounds: GuardedHttpToolsProtocol overrides and reads
# members of HttpToolsProtocol, RequestResponseCycle, FlowControl and ServerState that are
# not uvicorn's documented API. tests/unit/test_uvicorn_members.py lists every one and fails
# by name when one is gone; pyproject.toml pins uvicorn to the versions that test passed on.

from __future__ import annotations

import asyncio
import logging
import math
import resource
import time
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.api.errors import error_body

log = logging.getLogger(__name__)

# A refused connection gets its answer, then a half-close (FIN after the answer), and what
# the client still sends is read and dropped until it closes or this many seconds pass.
# Closing at once with unread bytes makes the kernel send a reset, which can destroy the
# answer before the client reads it (a client still writing a 1 MB header never sees a 431).
LINGER_S = 2.0
# Refused connections lingering at once, at most: past this (a flood of refusals), a
# refusal closes at once, so lingering never eats the descriptors the cap protects.
MAX_LINGERING = 256
# Descriptors the process needs besides its client connections: the listening socket,
# model files, logs, the event loop's own, and refused connections while they linger.
FD_HEADROOM = 1024
# At most one log line per kind of refusal per this many seconds (a flood must not flood
# the log too); the line says how many connections were refused since the last line
# (refusals after the last line of a burst are counted in the next burst's line).
LOG_INTERVAL_S = 10.0
# The socket's write buffer (asyncio's high-water mark): past it the answer waits for the
# client to read (uvicorn's flow control), so a connection holds at most this, one write
# (app/api/answers.py: SEND_BYTES) and the arrays of the answer being sent.
WRITE_HIGH_WATER = 256 * 1024
# On shutdown an idle kept-alive connection stays open this long: a request already on
# its way gets an answer (503, Connection: close) instead of meeting a closed socket.
SHUTDOWN_GRACE_S = 0.5
# The ASGI scope extension through which an answer tells its connection how many bytes
# it holds while it waits for the client (app/api/answers.py).
HOLD_EXTENSION = "encoder.unsent"


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    read_timeout_s: float
    max_connections: int
    write_timeout_s: float = 30.0
    max_unsent_bytes: int = 512 * 1024 * 1024


class Shared:
    """What the connections of one server share: the stalled writers and the shutdown."""

    def __init__(self) -> None:
        # Connections whose client is not reading (write buffer over the high-water mark),
        # oldest first, with the bytes each held when it stalled.
        self.stalled: dict[GuardedHttpToolsProtocol, int] = {}
        self.stalled_bytes = 0
        # Draining: every answer closes its connection (Connection: close).
        self.draining = False
        # Shutting down: idle connections close after SHUTDOWN_GRACE_S.
        self.shutting_down = False


class _Tally:
    """Rate-limited log lines: how many connections were refused for one reason."""

    def __init__(self, what: str, level: int = logging.WARNING) -> None:
        self.what = what
        self.level = level
        self.count = 0
        self.last = -math.inf

    def note(self) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= LOG_INTERVAL_S:
            log.log(self.level, "%d connection(s) %s", self.count, self.what)
            self.count = 0
            self.last = now


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounds on what one connection may hold.

    uvicorn has no header size limit for httptools (only h11 has one), and no timeout on
    receiving a request: its keep-alive timer is reset by every byte, so a client sending
    a byte now and then holds a connection for ever (uvicorn issue #157). Worse, httptools
    accumulates a header value that arrives in pieces with `bytes +=`, quadratic in its
    size, and uvicorn does the same with the URL. So:

    - the bytes of a request's head (request line and headers) are counted as they are fed
      to the parser, and at most the limit is ever fed: beyond it, 431 and close;
    - a request must be received whole (head and announced body) within the read timeout
      of its first byte, and a new connection must send within it: else 408 and close.
      The timer stops when the request is complete, so a slow answer is never cut, and
      between requests only the keep-alive timeout applies;
    - a connection beyond the cap is answered 503 at once and closed.
    """

    limits: ClassVar[ConnectionLimits]
    tallies: ClassVar[dict[int | str, _Tally]]
    lingering: ClassVar[list[int]]  # refused connections lingering now (one shared cell)
    shared: ClassVar[Shared]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None  # set while lingering
        self._waiting_first_byte = True
        # Between the end of one request and the end of the next one's headers.
        self._in_head = True
        self._head_bytes = 0
        # The parser has begun a request that is not complete yet.
        self._message_open = False
        # Answered and closing: what arrives now is dropped unparsed.
        self._discarding = False
        # Bytes the answer being sent holds besides the socket buffer (its arrays).
        self._answer_bytes = 0
        self._write_timer: asyncio.TimerHandle | None = None
        self._unsent_at_check = 0  # the write buffer's size when the timer was armed
        # The answer is written but not read: the next request waits (see resume_writing).
        self._completion_deferred = False
        self._grace_timer: asyncio.TimerHandle | None = None

    @classmethod
    def with_limits(cls, limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
        tallies = {
            431: _Tally("answered 431: request line and headers too large"),
            # Browsers' unused preconnections end this way too: not worth a warning.
            408: _Tally("closed: request not received within the read timeout", logging.INFO),
            503: _Tally("refused with 503: at the connection limit"),
            "write": _Tally("closed: the client did not read its answer within the write timeout"),
            "unsent": _Tally("closed: the longest stalled, over ENCODER_MAX_UNSENT_BYTES"),
        }
        attributes = {"limits": limits, "tallies": tallies, "lingering": [0], "shared": Shared()}
        bound = type(cls.__name__, (cls,), attributes)
        return cast(type[GuardedHttpToolsProtocol], bound)

    # Connection lifetime

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # `connections` is the server's set of open ones (this one is not in it yet).
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport
            self.tallies[503].note()
            message = (
                f"the server holds its maximum of {self.limits.max_connections} connections; "
                "retry later"
            )
            self._answer_and_linger(503, "too_many_connections", message, b"retry-after: 1\r\n")
            return
        super().connection_made(transport)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._arm_read_timer()
        if self.shared.shutting_down:  # accepted from the backlog as the server stops
            self.shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        self._end_stall()
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
            self.lingering[0] -= 1
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The connection now belongs to the websocket protocol: no request timer here.
        self._cancel_read_timer()
        super().handle_websocket_upgrade()

    # Reading

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        self._unset_keepalive_if_required()
        if self._waiting_first_byte:
            # The first request's clock starts at its first byte, not at the connection.
            self._waiting_first_byte = False
            self._arm_read_timer()
        elif self._read_timer is None:
            # First bytes of the next request on a kept-alive connection: its own clock.
            self._arm_read_timer()
        limit = self.limits.max_header_bytes
        view = memoryview(data)
        while view:
            if self._in_head:
                # Never feed the parser more of a head than the limit allows.
                size = min(limit - self._head_bytes, len(view))
                self._head_bytes += size
            else:
                # Body bytes go in slices of the limit too, so a pipelined request that
                # starts inside a slice has at most one slice's head bytes uncounted.
                size = min(limit, len(view))
            chunk, view = view[:size], view[size:]
            if not self._feed(chunk):
                return
            if self._in_head and self._head_bytes >= limit:
                self.tallies[431].note()
                message = f"the request line and headers exceed {limit} bytes"
                self._refuse(431, "headers_too_large", message)
                return

    def _feed(self, chunk: memoryview) -> bool:
        """Feed the parser as uvicorn's `data_received` does; False once it must stop."""
        try:
            self.parser.feed_data(chunk)
        except httptools.HttpParserError:
            message = "Invalid HTTP request received."
            self.logger.warning(message)
            self.send_400_response(message)
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return not (self._discarding or self.transport.is_closing())

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {HOLD_EXTENSION: {"hold": self._hold_answer}}
        self._message_open = True
        if self._read_timer is None:
            # A pipelined request that began in the same read as the previous one ended.
            self._arm_read_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()
        if self.shared.draining and self.cycle is not None:
            # Shutting down: this request is answered (200 if the engine takes it, else
            # 503) with Connection: close, so the client opens its next one elsewhere
            # instead of sending on a connection the server is about to close.
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._message_open = False
        self._in_head = True
        self._head_bytes = 0
        # Received whole: from here on the answer takes the time it takes.
        self._cancel_read_timer()

    def on_response_complete(self) -> None:
        if self.flow.write_paused and not self.transport.is_closing():
            # The client has not read this answer yet: the next request (pipelined, or
            # arriving now) waits until it does, so a connection that does not read
            # holds one answer, not one per request it sends.
            self._completion_deferred = True
            self.flow.pause_reading()
            return
        super().on_response_complete()

    # Writing: flow control, the write timeout and the cap on unsent bytes

    def pause_writing(self) -> None:
        if self.flow is None:
            return  # a refused connection (at the cap): it closes after its answer
        super().pause_writing()
        if self in self.shared.stalled:
            return
        unsent = self.transport.get_write_buffer_size()
        held = unsent + self._answer_bytes
        self.shared.stalled[self] = held
        self.shared.stalled_bytes += held
        self._unsent_at_check = unsent
        self._write_timer = self.loop.call_later(self.limits.write_timeout_s, self._write_timed_out)
        self._enforce_unsent_cap()

    def resume_writing(self) -> None:
        if self.flow is None:
            return
        super().resume_writing()
        self._end_stall()
        if self._completion_deferred and not self.transport.is_closing():
            self._completion_deferred = False
            self.on_response_complete()

    def _end_stall(self) -> None:
        held = self.shared.stalled.pop(self, None)
        if held is not None:
            self.shared.stalled_bytes -= held
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _hold_answer(self, nbytes: int) -> None:
        """Called by the answer being sent (app/api/answers.py): the bytes it holds."""
        if self in self.shared.stalled:
            self.shared.stalled[self] += nbytes - self._answer_bytes
            self.shared.stalled_bytes += nbytes - self._answer_bytes
        self._answer_bytes = nbytes

    def _write_timed_out(self) -> None:
        self._write_timer = None
        unsent = self.transport.get_write_buffer_size()
        if unsent < self._unsent_at_check:
            # The client reads, if slowly (as nginx's send_timeout, the clock runs
            # between two reads, not over the whole answer).
            self._unsent_at_check = unsent
            self._write_timer = self.loop.call_later(
                self.limits.write_timeout_s, self._write_timed_out
            )
            return
        self.tallies["write"].note()
        self._abort()

    def _enforce_unsent_cap(self) -> None:
        """Past the cap on what stalled connections hold together, abort the one stalled
        longest until it fits: its memory is freed at once, its client gets a reset."""
        shared = self.shared
        while shared.stalled_bytes > self.limits.max_unsent_bytes and shared.stalled:
            victim = next(iter(shared.stalled))
            victim.tallies["unsent"].note()
            victim._abort()

    def _abort(self) -> None:
        self._end_stall()
        self._discarding = True
        # close() would wait for the buffer to drain: abort() drops it now.
        self.transport.abort()

    # Shutdown

    def shutdown(self) -> None:
        """Called by uvicorn as the server stops (and for a connection accepted then).

        A connection that is answering closes after its answer. An idle one stays open
        for SHUTDOWN_GRACE_S: a request that was on its way is answered (503, the engine
        no longer takes work, with Connection: close) rather than reset by the close.
        """
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False
            return
        if self._grace_timer is None and not self.transport.is_closing():
            self._grace_timer = self.loop.call_later(SHUTDOWN_GRACE_S, self._close_if_idle)

    def _close_if_idle(self) -> None:
        self._grace_timer = None
        cycle = self.cycle
        if self._message_open or (cycle is not None and not cycle.response_complete):
            return  # a request came during the grace: its answer closes the connection
        if not self.transport.is_closing():
            self._discarding = True
            self.transport.close()

    # The read timer

    def _arm_read_timer(self) -> None:
        self._cancel_read_timer()
        self._read_timer = self.loop.call_later(self.limits.read_timeout_s, self._read_timed_out)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self._discarding or self.transport.is_closing():
            return
        if self.flow.read_paused or self.pipeline:
            # This server stopped reading (the application has not taken the body so far,
            # or earlier pipelined requests wait for their answers): not the client's delay.
            self._arm_read_timer()
            return
        if not self._message_open:
            # Nothing of a request came, or only the blank lines the parser skips.
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                return  # an answer is on its way; the keep-alive timer follows it
            # Close without a word, as an idle connection: an answer nobody asked for
            # could be read as the answer to the client's next request.
            self.tallies[408].note()
            self._discarding = True
            self.transport.close()
            return
        self.tallies[408].note()
        message = f"the request was not received within {self.limits.read_timeout_s:g} s"
        self._refuse(408, "request_timeout", message)

    # Refusing

    def _refuse(self, status: int, kind: str, message: str) -> None:
        """Answer `status` and close; an answer already on its way is finished first."""
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            # Answered already (a 413 before its body came, or the last request of a
            # kept-alive connection): a second answer would be read as the next one's.
            self._discarding = True
            self.transport.close()
            return
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started or not cycle.more_body:
                # A complete request is being answered (the refused bytes are a pipelined
                # next one): never cut that answer. Drop what comes, close after it.
                cycle.keep_alive = False
                self._discarding = True
                self._cancel_read_timer()
                return
            # The application waits for a body that will not come: the client is gone.
            cycle.disconnected = True
            cycle.message_event.set()
        self._answer_and_linger(status, kind, message)

    def _answer_and_linger(self, status: int, kind: str, message: str, extra: bytes = b"") -> None:
        body = error_body(status, kind, message)
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            extra,
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self._discarding = True
        self._cancel_read_timer()
        self._unset_keepalive_if_required()
        if self.flow is not None:
            self.flow.resume_reading()  # read (and drop) what the client still sends
        if self.transport.can_write_eof() and self.lingering[0] < MAX_LINGERING:
            self.transport.write_eof()
            self.lingering[0] += 1
            self._linger_timer = self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


def raise_open_files_limit(max_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard one so the cap can be reached.

    Returns the soft limit now in force. Past it, accept() fails: new connections then
    wait in the kernel's backlog instead of getting the 503 the cap promises.
    """
    needed = max_connections + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:
            log.warning(
                "could not raise the open files limit (RLIMIT_NOFILE) from %d to %d (%s): "
                "ENCODER_MAX_CONNECTIONS=%d needs about %d",
                soft,
                target,
                error,
                max_connections,
                needed,
            )
            return soft
        log.info(
            "raised the open files limit (RLIMIT_NOFILE) from %d to %d for "
            "ENCODER_MAX_CONNECTIONS=%d",
            soft,
            target,
            max_connections,
        )
    if target < needed:
        log.warning(
            "the open files limit (RLIMIT_NOFILE) stops at its hard limit, %d: "
            "ENCODER_MAX_CONNECTIONS=%d needs about %d; lower it or raise the hard limit "
            "(ulimit -Hn, docker run --ulimit nofile=...)",
            target,
            max_connections,
            needed,
        )
    return target
