"""The uvicorn members app/api/connections.py and app/api/server.py rely on beyond its
documented API (uvicorn has no public hooks for header limits, read timeouts or draining).

Each member is checked by name on a live server, connection and request of the installed
uvicorn, so an upgrade that renames or drops one fails here, saying which, instead of somewhere
in the connection tests. pyproject.toml pins uvicorn to the versions this file passed on; to
widen the pin, run it (and tests/integration/test_connections*.py) on the new version first.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import socket
import textwrap
from typing import Any, ClassVar

import pytest
import uvicorn
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

VERSION = uvicorn.__version__

# HttpToolsProtocol methods that uvicorn or asyncio call and GuardedHttpToolsProtocol overrides
# (calling uvicorn's own from its override).
PROTOCOL_HOOKS = [
    "connection_made",
    "connection_lost",
    "data_received",
    "handle_websocket_upgrade",
    "on_message_begin",
    "on_headers_complete",
    "on_message_complete",
    "on_response_complete",
    "pause_writing",
    "resume_writing",
    "shutdown",
]
# HttpToolsProtocol methods GuardedHttpToolsProtocol calls (its `_feed` repeats uvicorn's
# data_received, see test_data_received_does_what_feed_repeats).
PROTOCOL_CALLS = [
    "_unset_keepalive_if_required",
    "_should_upgrade",
    "_unsupported_upgrade_warning",
    "send_400_response",
]
# HttpToolsProtocol instance attributes read, as set once a connection has had a request.
PROTOCOL_STATE = [
    "transport",
    "flow",
    "parser",
    "cycle",
    "scope",
    "pipeline",
    "loop",
    "logger",
    "connections",
    "server_state",
]
# The request's RequestResponseCycle (`self.cycle`): what the guard reads and sets.
CYCLE_STATE = [
    "keep_alive",
    "response_complete",
    "response_started",
    "more_body",
    "disconnected",
    "message_event",
]
# FlowControl (`self.flow`).
FLOW_STATE = ["write_paused", "read_paused", "pause_reading", "resume_reading"]
# uvicorn.server.ServerState (`self.server_state`): the connections the cap counts, and the
# default headers (server, date) a refusal's answer carries.
SERVER_STATE_FIELDS = ["connections", "default_headers"]
# uvicorn.Server: DrainingServer overrides handle_exit and shutdown and reads the rest.
SERVER_MEMBERS = ["handle_exit", "shutdown", "run", "should_exit", "config", "server_state"]
# Set by uvicorn.Server while it serves (not in __init__): the listening asyncio servers, and
# the lifespan whose state every protocol instance receives.
SERVER_RUNNING = ["servers", "lifespan"]
# The keyword arguments DrainingServer.shutdown builds protocol instances with, as uvicorn's
# own factory does.
PROTOCOL_ARGUMENTS = ["config", "server_state", "app_state"]
# The refusals' status lines (STATUS_LINE, a module-level table).
REFUSAL_STATUSES = [408, 431, 503]


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


class _Recording(HttpToolsProtocol):
    made: ClassVar[list[HttpToolsProtocol]] = []

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.made.append(self)


async def _serve_one_request() -> dict[str, Any]:
    """A uvicorn server with one answered request: the objects the checks read."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    config = uvicorn.Config(_app, http=_Recording, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        answer = await reader.readuntil(b"ok")
        assert answer.startswith(b"HTTP/1.1 200")
        protocol = _Recording.made[-1]
        objects = {
            "server": server,
            "server_running": {name: getattr(server, name, None) for name in SERVER_RUNNING},
            "protocol": protocol,
            "protocol_state": {name: getattr(protocol, name, None) for name in PROTOCOL_STATE},
        }
        writer.close()
        return objects
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        listening.close()


@pytest.fixture(scope="module")
def live() -> dict[str, Any]:
    return asyncio.run(_serve_one_request())


def _missing(owner: str, name: str) -> str:
    return f"uvicorn {VERSION}: {owner} has no `{name}`, which app/api relies on"


@pytest.mark.parametrize("name", PROTOCOL_HOOKS + PROTOCOL_CALLS)
def test_protocol_method(name: str) -> None:
    assert callable(getattr(HttpToolsProtocol, name, None)), _missing("HttpToolsProtocol", name)


@pytest.mark.parametrize("name", PROTOCOL_STATE)
def test_protocol_state(live: dict[str, Any], name: str) -> None:
    assert live["protocol_state"][name] is not None, _missing("an HttpToolsProtocol instance", name)


@pytest.mark.parametrize("name", CYCLE_STATE)
def test_request_cycle_state(live: dict[str, Any], name: str) -> None:
    cycle = live["protocol_state"]["cycle"]
    assert hasattr(cycle, name), _missing("RequestResponseCycle", name)


@pytest.mark.parametrize("name", FLOW_STATE)
def test_flow_control(live: dict[str, Any], name: str) -> None:
    flow = live["protocol_state"]["flow"]
    assert hasattr(flow, name), _missing("FlowControl", name)


@pytest.mark.parametrize("name", SERVER_STATE_FIELDS)
def test_server_state(live: dict[str, Any], name: str) -> None:
    state = live["server"].server_state
    assert hasattr(state, name), _missing("ServerState", name)


@pytest.mark.parametrize("name", SERVER_MEMBERS)
def test_server_member(live: dict[str, Any], name: str) -> None:
    assert hasattr(live["server"], name), _missing("uvicorn.Server", name)


@pytest.mark.parametrize("name", SERVER_RUNNING)
def test_server_member_while_serving(live: dict[str, Any], name: str) -> None:
    assert live["server_running"][name] is not None, _missing("a serving uvicorn.Server", name)
    if name == "lifespan":
        assert hasattr(live["server_running"][name], "state"), _missing("the lifespan", "state")


@pytest.mark.parametrize("name", PROTOCOL_ARGUMENTS)
def test_protocol_constructor_argument(name: str) -> None:
    parameters = inspect.signature(HttpToolsProtocol.__init__).parameters
    assert name in parameters, _missing("HttpToolsProtocol.__init__", f"{name}=")


@pytest.mark.parametrize("status", REFUSAL_STATUSES)
def test_status_line(status: int) -> None:
    line = getattr(httptools_impl, "STATUS_LINE", {}).get(status)
    assert line is not None and line.startswith(b"HTTP/1.1 %d " % status), _missing(
        "httptools_impl.STATUS_LINE", str(status)
    )


def _self_attributes(function: object) -> set[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))  # type: ignore[arg-type]
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }


def test_data_received_does_what_feed_repeats() -> None:
    """GuardedHttpToolsProtocol.data_received replaces uvicorn's (it feeds the parser in
    counted slices) and `_feed` repeats the rest: what uvicorn's does must be what it repeats."""
    repeated = {
        "_unset_keepalive_if_required",
        "parser",
        "logger",
        "send_400_response",
        "_should_upgrade",
        "handle_websocket_upgrade",
        "_unsupported_upgrade_warning",
    }
    used = _self_attributes(HttpToolsProtocol.data_received)
    assert used == repeated, (
        f"uvicorn {VERSION}: HttpToolsProtocol.data_received now uses {sorted(used - repeated)} "
        f"and no longer {sorted(repeated - used)}: update GuardedHttpToolsProtocol.data_received "
        "and _feed (app/api/connections.py)"
    )


def test_server_shutdown_shuts_each_connection_down() -> None:
    """DrainingServer.shutdown relies on uvicorn's calling every connection's `shutdown()`
    (GuardedHttpToolsProtocol.shutdown gives idle ones their grace)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(uvicorn.Server.shutdown)))
    calls = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert "shutdown" in calls, f"uvicorn {VERSION}: Server.shutdown no longer calls shutdown()"
